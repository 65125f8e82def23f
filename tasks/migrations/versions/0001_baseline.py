"""The schema novi-mailman 0.1.0 wrote, from every column set it shipped.

Ledgers made before revisions existed were upgraded by adding the columns they missed when
opened; they hold one of eight column sets (tests/fixtures/ledgers). This revision brings any of
them, or an empty database, to the last one: missing tables created, missing columns and
indexes added. It only adds, so it is safe on a ledger that has some of it already.

The tables are written out here as they were, not imported: later revisions change the models,
never this one.
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_tables = sa.MetaData()
_when = sa.DateTime(timezone=True)
sa.Table(
    "managed_addresses", _tables,
    sa.Column("list_id", sa.String(255), primary_key=True),
    sa.Column("match_key", sa.String(320), primary_key=True),
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("novi_id", sa.String(64)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("how", sa.String(16), nullable=False),
    sa.Column("on_roster", sa.Boolean, nullable=False),
    sa.Column("eligible", sa.Boolean, nullable=False),
    sa.Column("first_managed_at", _when, nullable=False),
    sa.Column("last_seen_on_roster_at", _when),
    sa.Column("last_eligible_at", _when),
    sa.Column("left_at", _when),
    sa.Column("left_expires", _when),
    sa.Column("delivery_mode", sa.String(32)),
    sa.Column("moderation_action", sa.String(16)),
    sa.Column("delivery_status", sa.String(16)),
    sa.Column("run_id", sa.String(64)),
)
sa.Table(
    "changes", _tables,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("at", _when, nullable=False),
    sa.Column("list_id", sa.String(255), nullable=False),
    sa.Column("match_key", sa.String(320), nullable=False),
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("novi_id", sa.String(64)),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("detail", sa.Text),
    sa.Column("display_name", sa.Text),
    sa.Column("previous", sa.Text),
    sa.Column("delivery_mode", sa.String(32)),
    sa.Column("moderation_action", sa.String(16)),
    sa.Column("delivery_status", sa.String(16)),
    sa.Index("ix_changes_match_key", "match_key", "at"),
)
sa.Table(
    "runs", _tables,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("flow_run_id", sa.String(64)),
    sa.Column("attempt", sa.Integer),
    sa.Column("run_name", sa.String(128)),
    sa.Column("started_at", _when, nullable=False),
    sa.Column("ended_at", _when, nullable=False),
    # Added to older ledgers with the value every run of theirs had.
    sa.Column("kind", sa.String(16), nullable=False, server_default="full"),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("message", sa.Text),
    sa.Column("novi_members", sa.Integer),
    sa.Column("changes", sa.Integer),
    sa.Column("failed", sa.Integer),
)
sa.Table(
    "run_lists", _tables,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("list_id", sa.String(255), primary_key=True),
    sa.Column("eligible", sa.Integer, nullable=False),
    sa.Column("roster", sa.Integer, nullable=False),
    sa.Column("managed", sa.Integer, nullable=False),
    sa.Column("changes", sa.Integer, nullable=False),
    sa.Column("failed", sa.Integer, nullable=False),
)
sa.Table(
    "list_locks", _tables,
    sa.Column("list_id", sa.String(255), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("holder", sa.String(255), nullable=False),
    sa.Column("acquired_at", _when, nullable=False),
    sa.Column("heartbeat_at", _when, nullable=False),
    sa.Column("lease", sa.String(32)),
)
sa.Table(
    "intents", _tables,
    sa.Column("intent_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("run_name", sa.String(128)),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("lease", sa.String(32), nullable=False),
    sa.Column("started_at", _when, nullable=False),
    sa.Column("at", _when, nullable=False),
    sa.Column("list_id", sa.String(255), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("match_key", sa.String(320), nullable=False),
    sa.Column("novi_id", sa.String(64)),
    sa.Column("display_name", sa.Text),
    sa.Column("previous", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("delivery_mode", sa.String(32)),
    sa.Column("moderation_action", sa.String(16)),
    sa.Column("delivery_status", sa.String(16)),
    sa.Column("batch", sa.String(32), nullable=False),
    sa.Column("outcome", sa.String(32)),
    sa.Index("ix_intents_list", "list_id"),
)


def upgrade() -> None:
    bind = op.get_bind()
    for table in _tables.sorted_tables:
        inspector = sa.inspect(bind)
        if not inspector.has_table(table.name):
            table.create(bind)
            continue
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:  # every column added since 0.1.0 first shipped may be NULL
                op.add_column(table.name, sa.Column(column.name, column.type, nullable=column.nullable,
                                                    server_default=column.server_default))
        indexes = {index["name"] for index in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                index.create(bind)


def downgrade() -> None:
    raise NotImplementedError("a ledger is never taken back before the base: restore a backup instead")
