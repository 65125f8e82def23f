"""Keeping the ledger over the years: what it holds (status), everything it holds about one
person (export, an access request), and no more than it needs (prune, forget)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

import pandas as pd
from sqlalchemy import delete, func, inspect, select

from tasks.core.schema import (FLAG_COLUMNS, LEDGER_COLUMNS, TIMESTAMP_COLUMNS, TOOK, Action, How,
                               Status, empty_ledger)
from tasks.ledger import Ledger
from tasks.ledger_schema import (
    HEAD,
    addresses_table,
    changes_table,
    forgotten_table,
    intents_table,
    locks_table,
    meta_table,
    metadata,
    revision_of,
    run_lists_table,
    runs_table,
    written_by,
)
from tasks.release import RELEASE
from tasks.retention import blank

# What each table is, in the words `status` uses.
TABLES = {
    addresses_table.name: "managed addresses",
    changes_table.name: "changes",
    runs_table.name: "runs",
    run_lists_table.name: "run figures",
    intents_table.name: "intents",
    locks_table.name: "list locks",
}


def status(ledger: Ledger) -> dict:
    """Where the ledger is, its schema and this release's, its rows and its oldest history."""
    shown = {"ledger": ledger.location, "exists": ledger.exists, "release": RELEASE, "release_schema": HEAD}
    if not ledger.exists:
        return shown
    with ledger._connect() as conn:
        present = set(inspect(conn).get_table_names())
        shown.update(schema=revision_of(conn), written_by=written_by(conn),
                     rows={name: conn.execute(select(func.count()).select_from(metadata.tables[name])).scalar()
                           for name in TABLES if name in present})
        oldest = conn.execute(select(func.min(changes_table.c.at))).scalar()
        oldest_run = conn.execute(select(func.min(runs_table.c.started_at))).scalar()
    shown.update(oldest_change=_stamp(oldest), oldest_run=_stamp(oldest_run),
                 upgrade_due=shown["schema"] != HEAD)
    return shown


def export(ledger: Ledger, address: str | None = None) -> dict:
    """Everything the ledger holds about one address (every table that names it), or all of
    it: an access request's answer, as plain JSON-ready data."""
    key = address.strip().casefold() if address else None
    found = {"ledger": ledger.location, "address": address, "exported_at": _stamp(datetime.now(timezone.utc))}
    if not ledger.exists:
        return found | {"tables": {}}
    tables = {}
    with ledger._connect() as conn:
        present = set(inspect(conn).get_table_names())
        for name in (n for n in TABLES if n in present):
            table = metadata.tables[name]
            if key is not None and "match_key" not in table.c:
                continue
            where = [table.c.match_key == key] if key is not None else []
            tables[name] = _rows(conn, table, *where)
        if key is not None:  # the runs that changed something for them, for context
            run_ids = sorted({row["run_id"] for row in tables.get(changes_table.name, [])})
            tables[runs_table.name] = _rows(conn, runs_table, runs_table.c.run_id.in_(run_ids))
    return found | {"tables": tables}


def _rows(conn, table, *where) -> list[dict]:
    """The table's rows `where` holds, in the columns this ledger has (an older one has fewer)."""
    present = [column["name"] for column in inspect(conn).get_columns(table.name)]
    rows = conn.execute(select(*(table.c[name] for name in present)).where(*where)).mappings().all()
    return [_plain(dict(row)) for row in rows]


def _plain(row: dict) -> dict:
    return {name: _stamp(value) if isinstance(value, datetime) else value for name, value in row.items()}


def _stamp(value) -> str | None:
    """A stored time as ISO 8601 in UTC (SQLite gives it back without its zone)."""
    if value is None:
        return None
    value = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat()


def prune(ledger: Ledger, keep_days: int, list_ids: Sequence[str] | None = None,
          now: datetime | None = None) -> dict[str, int]:
    """Remove, on these lists (all, when None), what is older than `keep_days` and no run needs:
    rows deleted per table. One transaction.

    Kept whatever its age, because the sync is wrong without it: each list's managed members,
    the people who left a list by themselves (an opt-out is kept for good), the last moderator
    change that made someone a moderator who still is one (the tool unmakes only its own), each
    list's newest completed full run (the collapse guard compares with it) and the intents of a
    run not yet settled. Removed: changes; removed members' rows and preferences once they
    lapsed longer ago; rows of addresses that bounced off a list and are no longer eligible
    since; each run's per-list figures; runs left with nothing."""
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=keep_days)
    removed: dict[str, int] = {}
    if list_ids is None:
        with ledger._connect() as conn:
            list_ids = _lists(conn)
    lists = list(list_ids)
    kept_figures = sorted({figures["run_id"] for figures in ledger.last_figures(lists).values()})
    with ledger._begin() as conn:
        in_lists = changes_table.c.list_id.in_(lists)
        moderators = conn.execute(
            select(changes_table.c.id, changes_table.c.list_id, changes_table.c.match_key, changes_table.c.action)
            .where(in_lists & changes_table.c.action.in_([Action.MODERATE, Action.UNMODERATE])
                   & changes_table.c.outcome.in_(list(TOOK)))
            .order_by(changes_table.c.id)).all()
        last = {(row.list_id, row.match_key): row for row in moderators}
        in_effect = [row.id for row in last.values() if row.action == Action.MODERATE]
        removed[changes_table.name] = conn.execute(delete(changes_table).where(
            in_lists & (changes_table.c.at < cutoff) & changes_table.c.id.not_in(in_effect))).rowcount
        old_runs = select(runs_table.c.run_id).where(runs_table.c.ended_at < cutoff)
        removed[run_lists_table.name] = conn.execute(delete(run_lists_table).where(
            run_lists_table.c.list_id.in_(lists) & run_lists_table.c.run_id.in_(old_runs)
            & run_lists_table.c.run_id.not_in(kept_figures))).rowcount
        gone = addresses_table.c.list_id.in_(lists) & (
            ((addresses_table.c.status == Status.REMOVED) & (addresses_table.c.left_at < cutoff))
            | ((addresses_table.c.status == Status.BOUNCED) & (addresses_table.c.last_eligible_at < cutoff)))
        removed[addresses_table.name] = conn.execute(delete(addresses_table).where(gone)).rowcount
        removed[runs_table.name] = conn.execute(delete(runs_table).where(
            (runs_table.c.ended_at < cutoff)
            & runs_table.c.run_id.not_in(select(run_lists_table.c.run_id).distinct())
            & runs_table.c.run_id.not_in(select(changes_table.c.run_id).distinct())
            & func.coalesce(runs_table.c.flow_run_id, runs_table.c.run_id).not_in(
                select(intents_table.c.run_id).distinct()))).rowcount
    return removed


def _lists(conn) -> list[str]:
    """Every list the ledger knows."""
    return sorted({row[0] for table in (addresses_table, changes_table, run_lists_table)
                   for row in conn.execute(select(table.c.list_id).distinct())})


# --- erasure ----------------------------------------------------------------------------------
FORGET_KEY = "forget_key"   # ledger_meta: the key of this ledger's opt-out digests


def forget(ledger: Ledger, address: str, now: datetime | None = None) -> dict:
    """Erase one address from the ledger, every list: its memory, its history and its intents;
    the address in other rows' details blanked. An opt-out it held (left a list by themselves,
    or bounced off it) stays as a digest without the address, so that the next run still does
    not put them back (see `stand_ins`). Holds the lists' locks, so that no run writes them
    back meanwhile. What it found and did, including the Novi ids it held (for erasing the
    person from the Prefect server too)."""
    key, now = address.strip().casefold(), now or datetime.now(timezone.utc)
    with ledger._connect() as conn:
        lists = sorted({row[0] for table in (addresses_table, changes_table, intents_table)
                        for row in conn.execute(select(table.c.list_id).where(table.c.match_key == key).distinct())})
    found: dict = {"address": address, "lists": {}, "changes": 0, "intents": 0, "opt_outs_kept": [],
                   "details_blanked": 0, "novi_ids": []}
    if not lists:
        return found
    with ledger.lock(lists, f"forget-{uuid.uuid4().hex[:12]}"), ledger._begin() as conn:
        rows = conn.execute(select(addresses_table.c.list_id, addresses_table.c.novi_id, addresses_table.c.status,
                                   addresses_table.c.left_at, addresses_table.c.left_expires)
                            .where(addresses_table.c.match_key == key)).all()
        novi_ids = {row[0] for table in (addresses_table, changes_table, intents_table) for row in conn.execute(
            select(table.c.novi_id).where((table.c.match_key == key) & table.c.novi_id.is_not(None)).distinct())}
        opt_outs = [row for row in rows if row.status in (Status.LEFT, Status.BOUNCED)]
        if opt_outs:
            secret = _forget_key(conn)
            conn.execute(forgotten_table.insert(), [{
                "list_id": row.list_id, "address_digest": _digest(secret, "address", key),
                "novi_digest": _digest(secret, "novi", row.novi_id) if row.novi_id else None,
                "status": row.status, "since": row.left_at or now, "until": row.left_expires, "forgotten_at": now,
            } for row in opt_outs])
        found["lists"] = {row.list_id: row.status for row in rows}
        found["opt_outs_kept"] = sorted(row.list_id for row in opt_outs)
        conn.execute(delete(addresses_table).where(addresses_table.c.match_key == key))
        found["changes"] = conn.execute(delete(changes_table).where(changes_table.c.match_key == key)).rowcount
        found["intents"] = conn.execute(delete(intents_table).where(intents_table.c.match_key == key)).rowcount
        # Other rows may quote the address in their words (a duplicate's "Novi record … is used").
        for table, column in ((changes_table, changes_table.c.detail), (runs_table, runs_table.c.message)):
            quoting = conn.execute(select(table.primary_key.columns.values()[0], column)
                                   .where(func.lower(column).contains(key))).all()
            for row_id, text in quoting:
                conn.execute(table.update().where(table.primary_key.columns.values()[0] == row_id)
                             .values({column.name: blank(text, [key])}))
            found["details_blanked"] += len(quoting)
        found["novi_ids"] = sorted(novi_ids)
    return found


def stand_ins(ledger: Ledger, list_ids: Sequence[str], members: pd.DataFrame) -> pd.DataFrame:
    """Ledger rows (LEDGER_COLUMNS, and the opt-out's `marker` id) standing in for the opt-outs
    of erased people who are among Novi's members (matched by their address's or their Novi
    id's digest), at the address Novi now gives them: the planner then leaves them off the
    list, as it did before they were erased. A run never stores such a row back while it is
    an opt-out (`Ledger.record`, `stand_ins=`)."""
    none = empty_ledger().assign(marker=pd.Series(dtype="Int64"))
    if not ledger.exists or members.empty:
        return none
    with ledger._connect() as conn:
        if not inspect(conn).has_table(forgotten_table.name):
            return none
        markers = conn.execute(select(forgotten_table).where(forgotten_table.c.list_id.in_(list(list_ids)))).all()
        secret = _forget_key(conn, make=False) if markers else None
    if not markers or secret is None:
        return none
    people = members.loc[members["match_key"].notna(), ["match_key", "email", "novi_id"]].drop_duplicates("match_key")
    by_address = {_digest(secret, "address", k): i for i, k in zip(people.index, people["match_key"])}
    by_novi = {_digest(secret, "novi", n): i for i, n in zip(people.index, people["novi_id"]) if isinstance(n, str)}
    rows = []
    for marker in markers:
        who = by_address.get(marker.address_digest)
        who = who if who is not None else by_novi.get(marker.novi_digest)
        if who is None:
            continue
        person = people.loc[who]
        rows.append({"list_id": marker.list_id, "match_key": person["match_key"], "email": person["email"],
                     "novi_id": person["novi_id"], "status": marker.status, "how": How.SUBSCRIBED,
                     "on_roster": False, "eligible": True, "first_managed_at": marker.since,
                     "last_seen_on_roster_at": marker.since, "last_eligible_at": marker.since,
                     "left_at": marker.since, "left_expires": marker.until, "marker": marker.id})
    if not rows:
        return none
    frame = pd.DataFrame(rows).reindex(columns=[*LEDGER_COLUMNS, "marker"]).drop_duplicates(["list_id", "match_key"])
    for column in TIMESTAMP_COLUMNS:
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame.astype({**{c: "string" for c in LEDGER_COLUMNS if c not in TIMESTAMP_COLUMNS + FLAG_COLUMNS},
                         "marker": "Int64"})


def _forget_key(conn, *, make: bool = True) -> bytes | None:
    value = conn.execute(select(meta_table.c.value).where(meta_table.c.key == FORGET_KEY)).scalar()
    if value is None and make:
        value = secrets.token_hex(32)
        conn.execute(meta_table.insert(), [{"key": FORGET_KEY, "value": value}])
    return bytes.fromhex(value) if value else None


def _digest(secret: bytes, kind: str, value: str) -> str:
    return hmac.new(secret, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()
