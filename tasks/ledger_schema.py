"""The ledger's tables, and their versions: Alembic migrations in `tasks/migrations`.

A ledger keeps its schema revision in Alembic's `alembic_version` table. A real run brings an
older ledger to this release's revision in one transaction before it writes (`upgrade`); a dry
run reads an older one as it is and upgrades nothing (`readable`); a ledger of a newer revision
than this release knows is refused by both, with one line naming the two. Ledgers made before
revisions existed (no `alembic_version`) are taken from the base: the first revision brings
every column set the project shipped to one schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine

from tasks.core.schema import RunKind
from tasks.errors import LedgerError
from tasks.release import RELEASE

# Every revision the migrations hold, oldest first (a test keeps it equal to tasks/migrations).
REVISIONS = ("0001", "0002", "0003")
HEAD = REVISIONS[-1]
UNVERSIONED = "unversioned"   # a ledger made before revisions existed (novi-mailman 0.1.0)
VERSION_TABLE = "alembic_version"
MIGRATIONS = Path(__file__).with_name("migrations")

metadata = MetaData()

addresses_table = Table(
    "managed_addresses", metadata,
    Column("list_id", String(255), primary_key=True),
    Column("match_key", String(320), primary_key=True),
    Column("email", String(320), nullable=False),
    Column("novi_id", String(64)),
    Column("status", String(16), nullable=False),      # tasks.core.schema.Status
    Column("how", String(16), nullable=False),         # subscribed | adopted
    Column("on_roster", Boolean, nullable=False),
    Column("eligible", Boolean, nullable=False),
    Column("first_managed_at", DateTime(timezone=True), nullable=False),
    Column("last_seen_on_roster_at", DateTime(timezone=True)),
    Column("last_eligible_at", DateTime(timezone=True)),
    Column("left_at", DateTime(timezone=True)),
    Column("left_expires", DateTime(timezone=True)),
    # The member's preferences on the list (tasks.core.schema.PREFERENCE_COLUMNS), as last seen.
    Column("delivery_mode", String(32)),
    Column("moderation_action", String(16)),
    Column("delivery_status", String(16)),
    Column("run_id", String(64)),
)

changes_table = Table(
    "changes", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("list_id", String(255), nullable=False),
    Column("match_key", String(320), nullable=False),
    Column("email", String(320), nullable=False),
    Column("novi_id", String(64)),
    Column("action", String(16), nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("reason", Text),
    Column("detail", Text),
    # What an undo of the run needs: the name it set and the one it replaced, and the
    # preferences the address had on the list (the roster's, or those it was subscribed with).
    Column("display_name", Text),
    Column("previous", Text),
    Column("delivery_mode", String(32)),
    Column("moderation_action", String(16)),
    Column("delivery_status", String(16)),
    Index("ix_changes_match_key", "match_key", "at"),
)

runs_table = Table(
    "runs", metadata,
    # One row per attempt: the UI's Retry runs a flow run again under the same flow-run id, so
    # the key is that id for the first attempt and `<id>.<n>` for attempt n (see `_attempt_key`).
    Column("run_id", String(64), primary_key=True),
    Column("flow_run_id", String(64)),
    Column("attempt", Integer),
    Column("run_name", String(128)),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True), nullable=False),
    Column("kind", String(16), nullable=False, default=RunKind.FULL),  # full | member (a webhook's few members)
    Column("state", String(16), nullable=False),       # tasks.core.schema.RunState
    Column("message", Text),
    Column("novi_members", Integer),
    Column("changes", Integer),
    Column("failed", Integer),
)

run_lists_table = Table(
    "run_lists", metadata,
    Column("run_id", String(64), primary_key=True),
    Column("list_id", String(255), primary_key=True),
    Column("eligible", Integer, nullable=False),
    Column("roster", Integer, nullable=False),
    Column("managed", Integer, nullable=False),
    Column("changes", Integer, nullable=False),
    Column("failed", Integer, nullable=False),
)


locks_table = Table(
    "list_locks", metadata,
    Column("list_id", String(255), primary_key=True),
    Column("run_id", String(64), nullable=False),
    Column("holder", String(255), nullable=False),   # host:pid
    Column("acquired_at", DateTime(timezone=True), nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
    Column("lease", String(32)),                     # this hold's own token: renewals and release use it
)

# What a run is about to write, before it is written (tasks.core.intents): one row per change,
# under the run's hold (`lease`). A run that ends removes its own with its record; those left
# are a dead run's, settled by the next run that takes the list against the roster it read.
intents_table = Table(
    "intents", metadata,
    Column("intent_id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), nullable=False),      # the flow run's id (a Retry keeps it)
    Column("run_name", String(128)),
    Column("kind", String(16), nullable=False),
    Column("lease", String(32), nullable=False),       # the hold it was written under: one per attempt
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("list_id", String(255), nullable=False),
    Column("action", String(16), nullable=False),
    Column("email", String(320), nullable=False),
    Column("match_key", String(320), nullable=False),
    Column("novi_id", String(64)),
    Column("display_name", Text),
    Column("previous", Text),
    Column("reason", Text),
    Column("delivery_mode", String(32)),
    Column("moderation_action", String(16)),
    Column("delivery_status", String(16)),
    Column("batch", String(32), nullable=False),        # the batch task it went out in
    Column("outcome", String(32)),                      # set once its batch has answered
    Index("ix_intents_list", "list_id"),
)

# What a column an older ledger lacks reads as, until it is upgraded: the value the upgrade gives
# it (tasks/migrations/versions/0001_baseline.py); None for the rest.
MISSING_AS = {"runs.kind": RunKind.FULL}

# Small facts about the ledger itself: which release last upgraded it (`written_by`).
meta_table = Table(
    "ledger_meta", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# An erased person's opt-out from a list (they left it by themselves, or bounced off it),
# without their address: keyed digests a run matches Novi's members against (tasks.ledger_keeping).
forgotten_table = Table(
    "forgotten", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("list_id", String(255), nullable=False),
    Column("address_digest", String(64), nullable=False),
    Column("novi_digest", String(64)),
    Column("status", String(16), nullable=False),           # left | bounced, as the ledger had it
    Column("since", DateTime(timezone=True), nullable=False),  # when they left
    Column("until", DateTime(timezone=True)),               # the row's left_expires
    Column("forgotten_at", DateTime(timezone=True), nullable=False),
    Index("ix_forgotten_list", "list_id"),
)

# The history is read by list and time (list-history, the digest) and pruned by time.
Index("ix_changes_list_at", changes_table.c.list_id, changes_table.c.at)
Index("ix_changes_at", changes_table.c.at)


def revision_of(conn: Connection) -> str | None:
    """The ledger's schema revision; `UNVERSIONED` for one made before revisions, None for none at all."""
    tables = set(inspect(conn).get_table_names())
    if VERSION_TABLE in tables:
        return conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    return UNVERSIONED if addresses_table.name in tables else None


def refuse_newer(revision: str | None, location: str) -> None:
    """One line for a ledger this release does not know the schema of: a newer release wrote it."""
    if revision in (None, UNVERSIONED) or revision in REVISIONS:
        return
    raise LedgerError(f"the ledger at {location} is at schema {revision}, newer than this release's {HEAD} "
                      f"(novi-mailman {RELEASE}): run a release that knows it, or point this one at another ledger")


def readable(engine: Engine, location: str) -> str | None:
    """A dry run's check: the ledger's revision, refused if newer; nothing is written."""
    with engine.connect() as conn:
        revision = revision_of(conn)
    refuse_newer(revision, location)
    return revision


def upgrade(engine: Engine, location: str) -> tuple[str | None, str]:
    """Bring the ledger to `HEAD` in one transaction, holding off other upgraders; (from, to).

    Nothing happens, and nothing is locked, when it is there already."""
    with engine.connect() as conn:
        if revision_of(conn) == HEAD:
            return HEAD, HEAD
    with _migrating(engine) as conn:
        current = revision_of(conn)  # again, under the lock: another run may have upgraded meanwhile
        refuse_newer(current, location)
        if current != HEAD:
            from alembic import command

            command.upgrade(alembic_config(conn), HEAD)
            conn.execute(meta_table.delete().where(meta_table.c.key == "written_by"))
            conn.execute(meta_table.insert(), [{"key": "written_by", "value": RELEASE}])
    return current, HEAD


def written_by(conn: Connection) -> str | None:
    """The release that last upgraded the ledger, if one did."""
    if not inspect(conn).has_table(meta_table.name):
        return None
    return conn.execute(select(meta_table.c.value).where(meta_table.c.key == "written_by")).scalar()


def alembic_config(conn: Connection | None = None):
    """Alembic's configuration for these migrations, on `conn` when given (no alembic.ini: the
    wheel and the image carry the migrations inside the package)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    return config


@contextmanager
def _migrating(engine: Engine) -> Iterator[Connection]:
    """One transaction that takes the write lock first: DDL and data alike commit or roll back
    together, and a second process upgrading at the same moment waits, then finds it done."""
    if engine.dialect.name == "sqlite":
        # pysqlite opens a transaction only before a data change, so DDL ahead of one would
        # commit on its own: the driver is left in autocommit and the transaction begun here
        # (SQLAlchemy's recipe for transactional DDL on SQLite), IMMEDIATE: the writer's lock first.
        migrating = create_engine(engine.url, connect_args={"timeout": 60})

        @event.listens_for(migrating, "connect")
        def _autocommit_driver(dbapi_connection, _record):
            dbapi_connection.isolation_level = None

        @event.listens_for(migrating, "begin")
        def _begin_immediate(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        try:
            with migrating.begin() as conn:
                yield conn
        finally:
            migrating.dispose()
        return
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('novi-mailman ledger upgrade'))"))
        yield conn
