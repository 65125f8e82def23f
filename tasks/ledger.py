"""The ledger: what the tool manages on each list, every change it made or refused, every run.

A SQL database through SQLAlchemy: a SQLite file by default (no set-up), PostgreSQL when
workers run on several machines. The planner reads it as one more input frame
(`tasks.core.schema.LEDGER_COLUMNS`); a real run writes the lists' next memory, its changes and its
figures in one transaction, so a run that fails half-way leaves the ledger as it was.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
from sqlalchemy import (
    DateTime,
    Table,
    create_engine,
    delete,
    event,
    inspect,
    literal,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from tasks.core.schema import (
    CHANGE_COLUMNS,
    FIGURE_COLUMNS,
    FLAG_COLUMNS,
    LEDGER_COLUMNS,
    OUTCOME_COLUMNS,
    PREFERENCE_COLUMNS,
    TIMESTAMP_COLUMNS,
    Action,
    How,
    Status,
    TOOK,
    Outcome,
    RunKind,
    RunState,
    empty_ledger,
    missing_as_none,
)
from tasks.core.intents import APPLIED, INTENT_COLUMNS, NOT_APPLIED, UNDECIDED
from tasks.errors import LedgerError, SyncError
from tasks.ledger_schema import (
    MISSING_AS,
    addresses_table,
    changes_table,
    forgotten_table,
    intents_table,
    locks_table,
    run_lists_table,
    runs_table,
    metadata,
    readable,
    upgrade,
)
from tasks.host import process_alive

LEDGER_ENV = "NOVI_MAILMAN_LEDGER"   # a path or a SQLAlchemy URL
HOME_ENV = "NOVI_MAILMAN_HOME"       # default ~/.novi-mailman

STALE_AFTER = timedelta(minutes=10)  # a lock whose holder stopped renewing it this long ago is dead


class ListBusy(SyncError):
    """Another run holds the lock of a list: two runs never write to one list at once."""


class LockLost(SyncError):
    """This run's hold on its lists was taken over, or could not be renewed: it must not write again."""


class Lease:
    """A run's hold on its lists, as the heartbeat last found it; `check()` before every write."""

    def __init__(self, list_ids: Sequence[str], token: str) -> None:
        self.list_ids = list(list_ids)
        self.token = token
        self.lost: str | None = None
        self.unreleased: str | None = None  # why the hold outlived its run (the ledger failed at the end)

    def check(self) -> None:
        """Raise `LockLost` once the hold may belong to another run."""
        if self.lost:
            raise LockLost(self.lost)


@dataclass(frozen=True)
class Journal:
    """Where a real run writes what it is about to apply (`Ledger.intend`) and what became of it."""

    ledger: Ledger
    lease: Lease
    run_id: str
    run_name: str
    kind: str
    started_at: datetime

    def intend(self, batch: str, action: str, changes: list[dict]) -> None:
        self.ledger.intend(self, batch, action, changes)

    def settled(self, batch: str, results: list[dict]) -> None:
        """Mark what Mailman answered. The answers stand if the ledger cannot take the marks: the
        run's record (which then fails too, and says what was applied) or the next run's
        settling against the roster tells what holds."""
        try:
            self.ledger.settled_batch(batch, results)
        except LedgerError as exc:
            logging.getLogger("novi_mailman.ledger").warning("A batch's outcomes could not be marked: %s", exc)


@dataclass(frozen=True)
class RunRecord:
    """One real run's figures, as the runs table keeps them."""

    run_id: str
    run_name: str
    started_at: datetime
    ended_at: datetime
    state: str
    message: str
    novi_members: int | None = None
    kind: str = RunKind.FULL


def default_url() -> str:
    """`$NOVI_MAILMAN_LEDGER` (a path or a URL), else `$NOVI_MAILMAN_HOME/ledger.sqlite`."""
    given = os.environ.get(LEDGER_ENV)
    if given:
        return given if "://" in given else f"sqlite:///{Path(given).expanduser().resolve()}"
    home = Path(os.environ.get(HOME_ENV, "~/.novi-mailman")).expanduser().resolve()
    return f"sqlite:///{home / 'ledger.sqlite'}"


def _frame(rows: Sequence, columns: list[str]) -> pd.DataFrame:
    """Result rows as a frame. Plain tuples: pandas probes each SQLAlchemy Row for attributes
    it lacks, two exceptions a row (0.6 s of reading a 100,000-member list)."""
    return pd.DataFrame([tuple(row) for row in rows], columns=columns)


# SQLAlchemy's text form of a timestamp on SQLite (its DATETIME type, which reads it back).
SQLITE_STAMP = "%Y-%m-%d %H:%M:%S.%f"


def _insert(conn, table: Table, frame: pd.DataFrame) -> None:
    """The frame's rows (none: nothing) into the table, in the caller's transaction.

    Built column by column: `to_dict("records")` boxes value by value. On SQLite the rows go to
    the driver as tuples with timestamps already in SQLAlchemy's text form: its per-row
    parameter processing was 1.4 of the 1.9 s of recording a 100,000-member list's rows."""
    if frame.empty:
        return
    sqlite = conn.dialect.name == "sqlite"
    columns: dict[str, list] = {}
    for name in frame.columns:
        column = frame[name]
        if sqlite and isinstance(table.c[name].type, DateTime):
            # A run stamps most rows alike: each distinct time is formatted once. Naive ones are UTC already.
            codes, stamps = pd.factorize(pd.to_datetime(column, utc=True))
            text = list(stamps.strftime(SQLITE_STAMP))
            columns[name] = [text[code] if code >= 0 else None for code in codes.tolist()]
        elif isinstance(column.dtype, pd.DatetimeTZDtype):
            stamps = column.array.to_pydatetime()
            columns[name] = [None if gone else stamp for stamp, gone in zip(stamps, column.isna().tolist())]
        else:
            columns[name] = missing_as_none(column).tolist()
    if sqlite:
        quote = conn.dialect.identifier_preparer.quote
        names = ", ".join(quote(name) for name in columns)
        conn.exec_driver_sql(f"INSERT INTO {quote(table.name)} ({names}) VALUES ({', '.join('?' * len(columns))})",
                             list(zip(*columns.values())))
    else:
        conn.execute(table.insert(), [dict(zip(columns, row)) for row in zip(*columns.values())])


class Ledger:
    """The ledger database; tables are created on first use."""

    def __init__(self, url: str | None = None, *, create: bool = True) -> None:
        """Open the ledger; `create=False` (dry runs) reads a missing ledger as empty and creates nothing."""
        url = url or default_url()
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError):  # their messages quote the URL, password and all
            raise LedgerError("the ledger URL is not a SQLAlchemy URL (e.g. postgresql+psycopg://user:pw@host/db)") \
                from None
        self.location = self.redacted(parsed)
        self.exists = True
        self.found_schema: str | None = None  # the schema revision it had when opened (None: a new ledger)
        self.upgraded_from: str | None = None  # ... when this opening upgraded it from there
        self._columns = list(LEDGER_COLUMNS)
        self._missing: set[str] = set()  # table.column an older ledger, read as it is, does not have yet
        try:
            if parsed.get_backend_name() == "sqlite":
                on_disk = bool(parsed.database) and parsed.database != ":memory:"
                if on_disk and not create and not Path(parsed.database).exists():
                    self.exists = False
                    return
                if on_disk:
                    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                # Runs on different lists may write at once: wait for the lock rather than fail.
                self.engine: Engine = create_engine(parsed, connect_args={"timeout": 60})
                event.listen(self.engine, "connect", _sqlite_pragmas)
            else:
                self.engine = create_engine(parsed, pool_pre_ping=True)
            if create:
                self.found_schema, now = upgrade(self.engine, self.location)
                self.upgraded_from = self.found_schema if self.found_schema not in (None, now) else None
            else:
                self.exists = readable(self.engine, self.location) is not None
                if self.exists:  # a dry run does not upgrade an older ledger: it reads what is there
                    tables = inspect(self.engine)
                    self._missing = {f"{table.name}.{column.name}" for table in metadata.sorted_tables
                                     if tables.has_table(table.name)
                                     for column in table.columns
                                     if column.name not in {c["name"] for c in tables.get_columns(table.name)}}
                    self._columns = [c for c in LEDGER_COLUMNS if f"{addresses_table.name}.{c}" not in self._missing]
        except SQLAlchemyError as exc:
            raise LedgerError(f"the ledger at {self.location} cannot be opened: {type(exc).__name__}") from None

    @staticmethod
    def redacted(url) -> str:
        """The URL fit to show: its password and every query value (`?password=` too) masked."""
        parsed = make_url(url)
        shown = parsed.set(query={}).render_as_string(hide_password=True)
        return shown + ("?" + "&".join(f"{key}=***" for key in parsed.query) if parsed.query else "")

    def __repr__(self) -> str:
        return f"Ledger({self.location})"

    def _c(self, table: Table, name: str):
        """A column as this ledger has it: one an older ledger (read by a dry run or a command,
        never upgraded by them) lacks reads as the value its upgrade would give it."""
        if f"{table.name}.{name}" not in self._missing:
            return table.c[name]
        return literal(MISSING_AS.get(f"{table.name}.{name}"), type_=table.c[name].type).label(name)

    def _all(self, table: Table) -> list:
        return [self._c(table, column.name) for column in table.columns]

    def read(self, list_ids: Sequence[str], *, novi_ids: Sequence[str] | None = None,
             match_keys: Sequence[str] | None = None) -> pd.DataFrame:
        """What the tool remembers about the given lists, as the planner's ledger frame; with
        `novi_ids`/`match_keys`, only the rows of those members or addresses."""
        if not self.exists:
            return empty_ledger()
        query = select(*[addresses_table.c[c] for c in self._columns]).where(
            addresses_table.c.list_id.in_(list(list_ids)))
        if novi_ids is not None or match_keys is not None:
            query = query.where(addresses_table.c.novi_id.in_(list(novi_ids or []))
                                | addresses_table.c.match_key.in_(list(match_keys or [])))
        with self._connect() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return empty_ledger()
        frame = _frame(rows, self._columns).reindex(columns=LEDGER_COLUMNS)
        for column in LEDGER_COLUMNS:
            if column in TIMESTAMP_COLUMNS:
                frame[column] = pd.to_datetime(frame[column], utc=True)
            elif column in FLAG_COLUMNS:
                frame[column] = frame[column].astype(bool)
            else:
                frame[column] = frame[column].astype("string")
        return frame

    def record(self, run: RunRecord, list_ids: Sequence[str], memory: pd.DataFrame | None, changes: pd.DataFrame,
               figures: pd.DataFrame, only_keys: Sequence[str] | None = None, lease: Lease | None = None,
               before: pd.DataFrame | None = None, stand_ins: pd.DataFrame | None = None) -> int:
        """Store a run in one transaction: the lists' next memory (their rows), its changes, its
        figures; how many memory rows were written.

        Rows that stood in for erased people's opt-outs (`stand_ins`: list_id, match_key,
        marker; tasks.ledger_keeping.stand_ins) are not stored while they are opt-outs: the
        address stays erased. One whose person is on the list again is stored as any member's,
        and its opt-out marker goes.

        A full run replaces the lists' rows; given the rows they had when it read them (`before`,
        read under its lock) it writes only the rows that changed and deletes those that went. A
        member run (`only_keys`) replaces only the rows of the addresses it looked at, and leaves
        no list figures: they would not be whole. With `memory=None` (a refused run) the lists'
        rows stay as they were. A retry of a flow run is stored as one more attempt of it, never
        over the first. The run's intents (`lease`) go with it."""
        at = pd.Timestamp(run.ended_at)
        failed = changes.loc[changes["outcome"] == Outcome.FAILED]
        per_list = [{"list_id": f["list_id"], "eligible": int(f["eligible"]),
                     "roster": int(f["roster"]), "managed": int(f["managed"]),
                     "changes": int((changes["list_id"] == f["list_id"]).sum()),
                     "failed": int((failed["list_id"] == f["list_id"]).sum())}
                    for f in figures.to_dict("records")] if only_keys is None else []
        scope = addresses_table.c.list_id.in_(list(list_ids))
        if only_keys is not None:
            scope &= addresses_table.c.match_key.in_(list(only_keys))
        released: list[int] = []
        if memory is not None and stand_ins is not None and not stand_ins.empty:
            memory, before, released = _without_opt_outs(memory, before, stand_ins)
        with self._begin() as conn:
            key = _insert_run(conn, run, changes=len(changes), failed=len(failed))
            if released:
                conn.execute(delete(forgotten_table).where(forgotten_table.c.id.in_(released)))
            if lease is not None:  # a run that ends leaves no intent behind
                conn.execute(delete(intents_table).where(intents_table.c.lease == lease.token))
            written = memory
            if memory is not None and before is not None and only_keys is None:
                gone, written = _changed_rows(memory[LEDGER_COLUMNS], before[LEDGER_COLUMNS])
                for (list_id,), keys in gone.groupby(["list_id"])["match_key"]:
                    keys = list(keys)
                    for first in range(0, len(keys), 500):
                        conn.execute(delete(addresses_table).where(
                            (addresses_table.c.list_id == list_id) & addresses_table.c.match_key.in_(keys[first:first + 500])))
            elif memory is not None:  # a refused run leaves the memory as it was
                conn.execute(delete(addresses_table).where(scope))
            if written is not None:
                _insert(conn, addresses_table, written[LEDGER_COLUMNS].assign(run_id=key))
            if run.kind == RunKind.UNDO:  # see _settle_undone
                _settle_undone(conn, changes, at, key)
            change_rows = changes.assign(run_id=key, at=at)[[c.name for c in changes_table.columns if c.name != "id"]]
            _insert(conn, changes_table, change_rows)
            if per_list:
                conn.execute(run_lists_table.insert(), [{"run_id": key, **row} for row in per_list])
        return 0 if written is None else len(written)

    def record_failure(self, run: RunRecord) -> None:
        """A run that ended before it could plan (a failed read, its lists busy): only its row."""
        self.record(run, [], None, pd.DataFrame(columns=OUTCOME_COLUMNS), pd.DataFrame(columns=FIGURE_COLUMNS))

    def history(self, address: str) -> pd.DataFrame:
        """Every change recorded for an address, across lists and runs, newest first."""
        return self._changes_with_runs(["list_id"], changes_table.c.match_key == address.strip().casefold())

    def list_history(self, list_id: str, since: datetime, until: datetime) -> pd.DataFrame:
        """Every change recorded on a list between `since` and `until`, by every kind of run and
        whatever its outcome (applied, refused, failed…), newest first, with the run that made it."""
        return self._changes_with_runs(["email"], changes_table.c.list_id == list_id, changes_table.c.at >= since,
                                       changes_table.c.at < until, kind=True)

    def _changes_with_runs(self, which: list[str], *where, kind: bool = False) -> pd.DataFrame:
        """The changes `where` holds, newest first: when, `which` (list or address), what, why, and
        the run (its name, attempt and, with `kind`, its kind)."""
        change_columns = ["at", *which, "action", "outcome", "reason", "detail", "novi_id", "run_id"]
        run_columns = ["run_name", *["kind"] * kind, "attempt"]
        if not self.exists:
            return pd.DataFrame(columns=change_columns + run_columns)
        query = (select(*(changes_table.c[c] for c in change_columns), *(self._c(runs_table, c) for c in run_columns))
                 .join(runs_table, runs_table.c.run_id == changes_table.c.run_id, isouter=True)
                 .where(*where)
                 .order_by(changes_table.c.at.desc(), changes_table.c.id.desc()))
        with self._connect() as conn:
            rows = conn.execute(query).all()
        frame = _frame(rows, change_columns + run_columns)
        frame["at"] = pd.to_datetime(frame["at"], utc=True)
        frame["attempt"] = frame["attempt"].fillna(1).astype(int)  # rows from before attempts were kept
        return frame

    def find_runs(self, ref: str) -> list[dict]:
        """The flow runs a reference names (a ledger key, a flow run id or a run's name), newest
        first, each with every attempt's key: {flow_run_id, run_name, kind, ended_at, keys}.
        Prefect's names repeat (two words): more than one is for the caller to refuse."""
        if not self.exists:
            return []
        ref = ref.strip()
        query = (select(*self._all(runs_table))
                 .where((runs_table.c.run_id == ref) | (self._c(runs_table, "flow_run_id") == ref)
                        | (runs_table.c.run_name == ref))
                 .order_by(runs_table.c.ended_at))
        with self._connect() as conn:
            rows = [dict(row) for row in conn.execute(query).mappings()]
        runs: dict[str, dict] = {}
        for row in rows:
            run = runs.setdefault(row["flow_run_id"] or row["run_id"], {
                "flow_run_id": row["flow_run_id"] or row["run_id"], "run_name": row["run_name"], "kind": row["kind"],
                "keys": []})
            run["keys"].append(row["run_id"])
            run["ended_at"] = row["ended_at"]  # the last attempt's
        return sorted(runs.values(), key=lambda run: run["ended_at"], reverse=True)

    def applied_changes(self, run_keys: Sequence[str]) -> pd.DataFrame:
        """The changes a run's attempts (their ledger keys) applied, with the name and
        preferences each address had: what an undo of it starts from. A ledger from before
        names and preferences were kept has them as missing."""
        columns = [c.name for c in changes_table.columns]
        with self._connect() as conn:
            present = {c["name"] for c in inspect(conn).get_columns(changes_table.name)}
            query = (select(*[changes_table.c[name] for name in columns if name in present])
                     .where(changes_table.c.run_id.in_(list(run_keys)) & (changes_table.c.outcome == Outcome.APPLIED))
                     .order_by(changes_table.c.id))
            rows = conn.execute(query).mappings().all()
        frame = pd.DataFrame([dict(r) for r in rows], columns=[c for c in columns if c in present])
        frame = frame.reindex(columns=columns)
        return frame.astype({c: "string" for c in columns if c not in ("id", "at")})

    def moderators_made(self, list_ids: Sequence[str]) -> pd.DataFrame:
        """The moderators this tool made on these lists and has not unmade since (list_id,
        match_key, email): the last moderator change that took, per address, is a `moderate`."""
        if not self.exists or not list_ids:
            return pd.DataFrame(columns=["list_id", "match_key", "email"], dtype="string")
        query = (select(changes_table.c.list_id, changes_table.c.match_key, changes_table.c.email,
                        changes_table.c.action)
                 .where(changes_table.c.list_id.in_(list(list_ids))
                        & changes_table.c.action.in_([Action.MODERATE, Action.UNMODERATE])
                        & changes_table.c.outcome.in_(list(TOOK)))
                 .order_by(changes_table.c.id))
        with self._connect() as conn:
            rows = _frame(conn.execute(query).all(), ["list_id", "match_key", "email", "action"])
        last = rows.drop_duplicates(["list_id", "match_key"], keep="last")
        return last.loc[last["action"] == Action.MODERATE, ["list_id", "match_key", "email"]].astype("string")

    def applied_since(self, at: datetime, list_ids: Sequence[str]) -> pd.DataFrame:
        """Changes applied to these lists after `at`, with their run's name (list_id, match_key, run_name)."""
        query = (select(changes_table.c.list_id, changes_table.c.match_key, runs_table.c.run_name)
                 .join(runs_table, runs_table.c.run_id == changes_table.c.run_id, isouter=True)
                 .where((changes_table.c.at > at) & (changes_table.c.outcome == Outcome.APPLIED)
                        & changes_table.c.list_id.in_(list(list_ids))))
        with self._connect() as conn:
            rows = conn.execute(query).all()
        return _frame(rows, ["list_id", "match_key", "run_name"])

    def memberships(self, address: str) -> pd.DataFrame:
        """What the ledger holds for an address now, one row per list."""
        if not self.exists:
            return pd.DataFrame()
        query = select(*self._all(addresses_table)).where(addresses_table.c.match_key == address.strip().casefold())
        with self._connect() as conn:
            rows = conn.execute(query).mappings().all()
        return pd.DataFrame([dict(r) for r in rows])

    def last_figures(self, list_ids: Sequence[str]) -> dict[str, dict]:
        """Per list, its figures at the newest completed full run that covered it.

        Per list, not the newest run overall: when two deployments share a ledger (two rules
        files, or two associations), the newest run may not have covered these lists at all,
        and the collapse guard must still compare each list with its own last good run.
        """
        if not self.exists or not list_ids:
            return {}
        query = (select(run_lists_table, runs_table.c.ended_at)
                 .join(runs_table, runs_table.c.run_id == run_lists_table.c.run_id)
                 .where((runs_table.c.state == RunState.COMPLETED) & (self._c(runs_table, "kind") == RunKind.FULL)
                        & run_lists_table.c.list_id.in_(list(list_ids)))
                 .order_by(runs_table.c.ended_at.desc()))
        newest: dict[str, dict] = {}
        with self._connect() as conn:
            for row in conn.execute(query).mappings():
                newest.setdefault(row["list_id"], dict(row))
        return newest

    @contextmanager
    def lock(self, list_ids: Sequence[str], run_id: str, stale_after: timedelta = STALE_AFTER,
             wait: timedelta = timedelta(0), tell: Callable[[str], None] | None = None) -> Iterator[Lease]:
        """Hold the lists for one run, renewing the hold while the run lasts; yields its `Lease`.

        A lock is taken over when its holder is a dead process on this host, or has not renewed
        it for `stale_after` (a worker that died elsewhere); otherwise, after trying for `wait`
        (a member run waits for the full sync), `ListBusy`. A renewal that finds the hold gone,
        or that has failed for half of `stale_after`, marks the lease lost: the run's next
        `lease.check()` raises `LockLost`, before it writes again.
        """
        holder = f"{socket.gethostname()}:{os.getpid()}"
        lease = Lease(list_ids, uuid.uuid4().hex)
        give_up = time.monotonic() + wait.total_seconds()
        said = None  # when the wait was last said (`tell`): at its start, then every minute
        while True:
            try:
                self._acquire(lease, run_id, holder, stale_after)
                break
            except ListBusy:
                if time.monotonic() >= give_up:
                    raise
                if tell is not None and (said is None or time.monotonic() - said >= 60):
                    said = time.monotonic()
                    tell(f"Waiting for the lock of {', '.join(list_ids)}: another run holds it; "
                         f"{(give_up - said) / 60:.0f} min more at most.")
                time.sleep(min(5.0, max(0.1, give_up - time.monotonic())))
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(lease, stop, stale_after), daemon=True,
                                name="novi-mailman-lock")
        beat.start()
        try:
            yield lease
        finally:
            stop.set()
            beat.join(timeout=10)
            try:
                with self._begin() as conn:
                    conn.execute(delete(locks_table).where(locks_table.c.lease == lease.token))
            except LedgerError as exc:
                # The run's outcome stands (Mailman may hold its changes, its report says so):
                # the hold it leaves is said with it, and lapses like a dead run's.
                lease.unreleased = (f"its lock on {', '.join(lease.list_ids)} could not be released ({exc}): the "
                                    "next run takes it over once this process has ended, or "
                                    f"{stale_after.seconds // 60} minutes after its last heartbeat")

    def _acquire(self, lease: Lease, run_id: str, holder: str, stale_after: timedelta) -> None:
        now = datetime.now(timezone.utc)
        mine = {"run_id": run_id, "holder": holder, "acquired_at": now, "heartbeat_at": now, "lease": lease.token}
        try:
            with self._begin() as conn:
                held = {row["list_id"]: row for row in conn.execute(
                    select(locks_table).where(locks_table.c.list_id.in_(lease.list_ids))).mappings().all()}
                for list_id in lease.list_ids:
                    row = held.get(list_id)
                    if row is None:
                        # Two runs inserting the same lock at once: the loser sees the key taken.
                        conn.execute(locks_table.insert(), [{"list_id": list_id, **mine}])
                        continue
                    if not _lock_is_dead(row, now, stale_after):
                        raise ListBusy(f"{list_id} is being synced by another run ({_holder(row)}); this run wrote "
                                       f"nothing. {_when_it_lapses(row, list_id, stale_after)}")
                    # Take over only the very hold we judged dead (compare and swap): another run
                    # that took it over a moment ago has changed its holder and heartbeat.
                    taken = conn.execute(update(locks_table).where(
                        (locks_table.c.list_id == list_id) & (locks_table.c.run_id == row["run_id"])
                        & (locks_table.c.holder == row["holder"])
                        & (locks_table.c.heartbeat_at == row["heartbeat_at"])).values(**mine))
                    if taken.rowcount != 1:
                        raise _TakenMeanwhile(list_id)
        except _TakenMeanwhile as exc:
            raise ListBusy(f"another run took over the lock of {exc} at the same moment; this run wrote "
                           "nothing") from None
        except LedgerError as exc:
            if "IntegrityError" in str(exc):  # both inserted the lock: the loser sees the key taken
                raise ListBusy(f"another run took the lock of {', '.join(lease.list_ids)} at the same moment; "
                               "this run wrote nothing") from None
            if "failed: OperationalError" in str(exc):  # SQLite: the other taker's write won the file
                raise ListBusy(f"the lock of {', '.join(lease.list_ids)} could not be taken (the ledger was busy "
                               "with another run taking it); this run wrote nothing") from None
            raise

    def _heartbeat(self, lease: Lease, stop: threading.Event, stale_after: timedelta) -> None:
        last_beat = time.monotonic()
        while not stop.wait(stale_after.total_seconds() / 4):
            try:
                with self._begin() as conn:
                    renewed = conn.execute(update(locks_table).where(locks_table.c.lease == lease.token)
                                           .values(heartbeat_at=datetime.now(timezone.utc))).rowcount
            except LedgerError:
                # A missed beat shortens the lock's life; once half of it is gone, another run may
                # soon judge it dead, so this one stops writing.
                if time.monotonic() - last_beat > stale_after.total_seconds() / 2:
                    lease.lost = (f"the lock on {', '.join(lease.list_ids)} could not be renewed for "
                                  f"{int(time.monotonic() - last_beat)} s (the ledger is unavailable); this run "
                                  "stopped before its next write so that no two runs write one list")
                    return
                continue
            if renewed != len(lease.list_ids):
                lease.lost = (f"the lock on {', '.join(lease.list_ids)} was taken over by another run; this run "
                              "stopped before its next write so that no two runs write one list")
                return
            last_beat = time.monotonic()

    def intend(self, journal: Journal, batch: str, action: str, changes: list[dict]) -> None:
        """Write a batch's changes (dicts with CHANGE_COLUMNS' fields) as this run's intents,
        before any is sent. Again for the same `batch` (its task retried) replaces them."""
        journal.lease.check()
        frame = pd.DataFrame(changes)
        rows = frame.reindex(columns=[c for c in INTENT_COLUMNS if c in CHANGE_COLUMNS]).assign(
            action=action, run_id=journal.run_id, run_name=journal.run_name[:128], kind=journal.kind,
            lease=journal.lease.token, started_at=pd.Timestamp(journal.started_at), at=pd.Timestamp.now(tz="UTC"),
            batch=batch)
        with self._begin() as conn:
            conn.execute(delete(intents_table).where(intents_table.c.batch == batch))
            _insert(conn, intents_table, rows[[c.name for c in intents_table.columns if c.name not in
                                                ("intent_id", "outcome")]])

    def settled_batch(self, batch: str, results: list[dict]) -> None:
        """Mark a batch's intents with what Mailman answered (`apply_changes`' rows)."""
        by_outcome: dict[str, list[str]] = {}
        for result in results:
            by_outcome.setdefault(result["outcome"], []).append(result["email"])
        with self._begin() as conn:
            for outcome, emails in by_outcome.items():
                conn.execute(update(intents_table).where((intents_table.c.batch == batch)
                                                         & intents_table.c.email.in_(emails)).values(outcome=outcome))

    def leftover_intents(self, list_ids: Sequence[str], lease: Lease | None) -> pd.DataFrame:
        """The intents on these lists of runs other than the one holding `lease` (None: of any
        run, as a dry run, which holds none, sees them): under its hold, they can only be dead
        runs' (INTENT_COLUMNS)."""
        if not self.exists:
            return pd.DataFrame(columns=INTENT_COLUMNS)
        with self._connect() as conn:
            if not inspect(conn).has_table(intents_table.name):  # a dry run's older ledger
                return pd.DataFrame(columns=INTENT_COLUMNS)
            scope = intents_table.c.list_id.in_(list(list_ids))
            if lease is not None:
                scope &= intents_table.c.lease != lease.token
            rows = conn.execute(select(*[intents_table.c[c] for c in INTENT_COLUMNS]).where(scope)
                                .order_by(intents_table.c.intent_id)).all()
        frame = _frame(rows, INTENT_COLUMNS)
        return frame.astype({c: "string" for c in INTENT_COLUMNS if c not in ("intent_id", "started_at", "at")})

    def settle_crashed(self, intents: pd.DataFrame, verdicts: pd.Series) -> list[dict]:
        """Record what dead runs are now known to have applied (their intents, with each
        verdict of tasks.core.intents.settle_intents), in one transaction: each dead attempt as a
        run of its own, ended `crashed`, with the changes that hold on Mailman; the addresses it
        subscribed managed (with the Novi id the intent carries), those it removed remembered as
        removed; then those intents go. What could not be decided is said in its message and kept
        for a run that reads what tells. Each
        dead attempt's {run_id, run_name, applied, not_applied, undecided}."""
        settled = []
        now = datetime.now(timezone.utc)
        with self._begin() as conn:
            for lease, mine in intents.groupby("lease", sort=False):
                verdict = verdicts.loc[mine.index]
                applied = mine.loc[verdict == APPLIED]
                counts = {v: int((verdict == v).sum()) for v in (APPLIED, NOT_APPLIED, UNDECIDED)}
                if counts[UNDECIDED] == len(mine):  # nothing told here: left whole for a run that can
                    continue
                first = mine.iloc[0]
                lists = ", ".join(sorted(set(mine["list_id"])))
                message = (f"crashed mid-apply; settled against the roster of {lists} by the next run: "
                           f"{counts[APPLIED]} changes had reached Mailman, {counts[NOT_APPLIED]} had not"
                           + (f", {counts[UNDECIDED]} could not be told yet (a later run that reads what tells "
                              "settles them)" if counts[UNDECIDED] else ""))
                record = RunRecord(run_id=first["run_id"], run_name=first["run_name"] or first["run_id"],
                                   started_at=pd.Timestamp(first["started_at"]).to_pydatetime(),
                                   ended_at=pd.Timestamp(mine["at"].max()).to_pydatetime(), state=RunState.CRASHED,
                                   message=message, kind=first["kind"])
                key = _insert_run(conn, record, changes=len(applied), failed=0)
                _remember_crashed(conn, applied, key, now)
                _insert(conn, changes_table, applied.assign(run_id=key, outcome=Outcome.APPLIED,
                                                            detail="found on Mailman after the run died")[
                    [c.name for c in changes_table.columns if c.name != "id"]])
                # Only what was told, on the lists read: a dead run's intents on other lists, or
                # undecided, wait for the run that reads them.
                told = mine.loc[verdict != UNDECIDED, "intent_id"].astype(int).tolist()
                for first in range(0, len(told), 500):
                    conn.execute(delete(intents_table).where(intents_table.c.intent_id.in_(told[first:first + 500])))
                settled.append({"run_id": key, "run_name": record.run_name, **counts})
        return settled

    def unlock(self, list_id: str, *, force: bool = False, stale_after: timedelta = STALE_AFTER) -> int:
        """Release a list's lock by hand; how many locks were released. A lock whose run is alive
        (its process runs on this host, or it renewed the lock lately) is refused, unless
        `force`d: freed, two runs would write the list at once."""
        if not self.exists:
            return 0
        with self._begin() as conn:
            row = conn.execute(select(*self._all(locks_table)).where(locks_table.c.list_id == list_id)).mappings().first()
            if row is None:
                return 0
            if not force and not _lock_is_dead(row, datetime.now(timezone.utc), stale_after):
                raise ListBusy(f"{list_id} is held by a run that is alive ({_holder(row)}); not released, so that no "
                               f"two runs write the list at once. {_when_it_lapses(row, list_id, stale_after)}")
            return conn.execute(delete(locks_table).where(
                (locks_table.c.list_id == list_id) & (locks_table.c.lease == row["lease"])
                if row["lease"] is not None else locks_table.c.list_id == list_id)).rowcount

    def _connect(self):
        return _Guarded(self.engine.connect, self.location)

    def _begin(self):
        return _Guarded(self.engine.begin, self.location)


class _Guarded:
    """A connection context that turns database failures into a `LedgerError` without the URL's secrets."""

    def __init__(self, opener, location: str) -> None:
        self._opener, self._location, self._context = opener, location, None

    def __enter__(self):
        try:
            self._context = self._opener()
            return self._context.__enter__()
        except SQLAlchemyError as exc:
            raise LedgerError(f"the ledger at {self._location} is unavailable: {type(exc).__name__}") from None

    def __exit__(self, exc_type, exc, tb):
        # SQLAlchemy's own messages quote statements and parameters (addresses): keep the type only.
        try:
            suppressed = self._context.__exit__(exc_type, exc, tb)
        except SQLAlchemyError as error:
            raise LedgerError(f"the ledger at {self._location} failed: {type(error).__name__}") from None
        if isinstance(exc, SQLAlchemyError):
            raise LedgerError(f"the ledger at {self._location} failed: {type(exc).__name__}; "
                              "nothing of this run was stored") from None
        return suppressed


class _TakenMeanwhile(Exception):
    """Inside `_acquire`'s transaction: a stale lock changed hands between reading and taking it."""


def _changed_rows(memory: pd.DataFrame, before: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What a run's memory changes of the rows its lists had (LEDGER_COLUMNS both): the keys
    (list_id, match_key) of the rows to delete (gone or changed) and the rows to insert (new or
    changed). Equal rows, missing values alike, are left as they are."""
    key = ["list_id", "match_key"]
    merged = memory.merge(before, on=key, how="outer", suffixes=("", "_was"), indicator=True)
    where = merged.pop("_merge").to_numpy()
    both = where == "both"
    same = both.copy()
    for column in LEDGER_COLUMNS:
        if column not in key:
            now, was = merged[column], merged[column + "_was"]
            same &= (now == was).fillna(False).to_numpy(dtype=bool) | (now.isna() & was.isna()).to_numpy(dtype=bool)
    changed = both & ~same
    return merged.loc[(where == "right_only") | changed, key], merged.loc[(where == "left_only") | changed,
                                                                           LEDGER_COLUMNS]


def _without_opt_outs(memory: pd.DataFrame, before: pd.DataFrame | None,
                      stand_ins: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None, list[int]]:
    """The memory and `before` without the stand-ins still opt-outs; the markers of those no longer."""
    key = ["list_id", "match_key"]
    now = stand_ins[[*key, "marker"]].merge(memory[[*key, "status"]], on=key, how="left")
    still = now["status"].isna() | now["status"].isin([Status.LEFT, Status.BOUNCED])
    hidden = now.loc[still, key]

    def without(frame: pd.DataFrame) -> pd.DataFrame:
        marked = frame.merge(hidden, on=key, how="left", indicator=True)
        return frame.loc[(marked["_merge"] == "left_only").to_numpy()]

    return (without(memory), None if before is None else without(before),
            [int(marker) for marker in now.loc[~still, "marker"]])


def _remember_crashed(conn, applied: pd.DataFrame, key: str, now: datetime) -> None:
    """A dead run's applied subscribes as managed members (with their intent's Novi id) and its
    applied removals as removed: what its record would have stored of them."""
    for status, action in ((Status.MEMBER, Action.SUBSCRIBE), (Status.REMOVED, Action.UNSUBSCRIBE)):
        rows = applied.loc[applied["action"] == action]
        _forget(conn, rows)
        _remember(conn, rows, status, now, key)

def _attempt_key(conn, run_id: str) -> tuple[str, int]:
    """The key and number of this run's attempt: the UI's Retry keeps the flow-run id."""
    earlier = conn.execute(select(runs_table.c.run_id).where(
        (runs_table.c.flow_run_id == run_id) | (runs_table.c.run_id == run_id))).all()
    attempt = len(earlier) + 1
    return (run_id if attempt == 1 else f"{run_id}.{attempt}"), attempt


def _insert_run(conn, run: RunRecord, *, changes: int, failed: int) -> str:
    """Add a run's row (as its next attempt); the key its changes and figures are stored under."""
    key, attempt = _attempt_key(conn, run.run_id)
    conn.execute(runs_table.insert(), [{
        "run_id": key, "flow_run_id": run.run_id, "attempt": attempt, "run_name": run.run_name,
        "started_at": run.started_at, "ended_at": run.ended_at, "kind": run.kind, "state": run.state,
        "message": run.message[:2000], "novi_members": run.novi_members, "changes": changes, "failed": failed}])
    return key


def _settle_undone(conn, changes: pd.DataFrame, at: pd.Timestamp, key: str) -> None:
    """What the ledger remembers of the addresses an undo subscribed or removed.

    Its rows described the run the undo took back (a member it subscribed, one it removed for
    lapsing, an old address it moved from): kept, they would make the next sync read an undone
    subscribe as "left the list themselves" (never re-added) and an undone move as a member on
    neither address. So they go. An address the undo put back for a Novi member is managed
    again, as a member with that Novi id: without the row, an address Novi no longer gives
    anyone (a later change, a merge) would be taken for one added by hand, and stay for good.
    One Novi never knew goes back as it was: unmanaged."""
    done = changes.loc[(changes["outcome"] == Outcome.APPLIED)
                       & changes["action"].isin([Action.SUBSCRIBE, Action.UNSUBSCRIBE])]
    _forget(conn, done)
    _remember(conn, done.loc[(done["action"] == Action.SUBSCRIBE) & done["novi_id"].notna()], Status.MEMBER, at, key)


def _forget(conn, rows: pd.DataFrame) -> None:
    """Delete the ledger rows of these (list_id, match_key) addresses."""
    for list_id, mine in rows.groupby("list_id"):
        conn.execute(delete(addresses_table).where((addresses_table.c.list_id == list_id)
                                                   & addresses_table.c.match_key.in_(list(mine["match_key"]))))


def _remember(conn, rows: pd.DataFrame, status: str, at, key: str) -> None:
    """Ledger rows for changes a run applied outside a plan's memory (an undo, a dead run's):
    members on the roster and eligible since `at`, or removed at `at`; their Novi id and
    preferences as the changes carry them."""
    member = status == Status.MEMBER
    _insert(conn, addresses_table, pd.DataFrame({
        "list_id": rows["list_id"], "match_key": rows["match_key"], "email": rows["email"],
        "novi_id": rows["novi_id"], "status": status, "how": How.SUBSCRIBED, "on_roster": member,
        "eligible": member, "first_managed_at": at, "last_seen_on_roster_at": at,
        "last_eligible_at": at if member else pd.NaT, "left_at": pd.NaT if member else at, "left_expires": pd.NaT,
        **{c: rows[c] for c in PREFERENCE_COLUMNS}, "run_id": key}))

def _holder(row) -> str:
    """Who holds a lock, fit for a message: the run, its host and since when."""
    return (f"run {row['run_id']} on {row['holder'].rpartition(':')[0]}, since "
            f"{row['acquired_at']:%Y-%m-%d %H:%M} UTC")


def _when_it_lapses(row, list_id: str, stale_after: timedelta) -> str:
    """What an operator can do about a live lock: wait. Only for a holder on another machine,
    which this one cannot see die, the way to free it by hand once they know it died."""
    host, _, pid = row["holder"].rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and process_alive(int(pid)):
        return f"That run's process ({pid}) is alive on this machine: wait for it to end."
    return (f"If that run died, its lock lapses {stale_after.seconds // 60} minutes after its last heartbeat; "
            f"if you know it died on its machine, release it now: novi-mailman unlock {list_id} --force")


def _lock_is_dead(row, now: datetime, stale_after: timedelta) -> bool:
    host, _, pid = row["holder"].rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid)):
        return True
    beat = row["heartbeat_at"]
    beat = beat if beat.tzinfo else beat.replace(tzinfo=timezone.utc)  # SQLite drops the zone
    return now - beat > stale_after


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets one run read while another writes; foreign keys are not used.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()
