"""Opt-outs of erased people, kept without their address.

Revision 0003, after 0002. `novi-mailman ledger forget ADDRESS` erases a person; when they had
left a list by themselves (or bounced off it), the next run must still not put them back. What
stays is a keyed digest of their address and of their Novi id (HMAC-SHA256 under a key of this
ledger's, in ledger_meta): a run recognises them among Novi's members, nobody reads an address
back from it.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "forgotten",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("list_id", sa.String(255), nullable=False),
        sa.Column("address_digest", sa.String(64), nullable=False),
        sa.Column("novi_digest", sa.String(64)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True)),
        sa.Column("forgotten_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_forgotten_list", "forgotten", ["list_id"])


def downgrade() -> None:
    op.drop_index("ix_forgotten_list", "forgotten")
    op.drop_table("forgotten")
