"""The history read by list and time and pruned by time; the release that last upgraded the ledger.

Revision 0002, after 0001. Retention (`ledger.keep_history_days`) deletes the history older
than a day each night, and list-history reads one list's recent days: both by `at`.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_index("ix_changes_list_at", "changes", ["list_id", "at"])
    op.create_index("ix_changes_at", "changes", ["at"])


def downgrade() -> None:
    op.drop_index("ix_changes_at", "changes")
    op.drop_index("ix_changes_list_at", "changes")
    op.drop_table("ledger_meta")
