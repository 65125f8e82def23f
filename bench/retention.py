"""What keeping personal data no longer than needed costs (issue 31): the ledger's side alone.

    .venv/bin/python -m bench.retention [--ledger URL] [--members 100000] [--days 365] [--churn 1036]

A ledger of `members` managed addresses on one list and `days` of history at `churn` changes a
day (a 100,000-member list's measured day, README Performance), on a SQLite file (default) or
the database a URL names. Timed, each the median of `--repeat`: the first prune after upgrading
(a year of history down to 90 days), a nightly prune (one day's worth ages out), the opt-out
stand-ins a run computes for `members` Novi members when erased people's markers exist, and
one erasure. Prints one line each.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd

from tasks import ledger_keeping
from tasks.ledger import Ledger
from tasks.ledger_schema import addresses_table, changes_table, run_lists_table, runs_table

LIST = "bench-retention.example.org"
NOW = datetime(2026, 12, 1, 2, 15, tzinfo=timezone.utc)


def fill(ledger: Ledger, members: int, days: int, churn: int) -> None:
    """`members` managed rows (a tenth of them opt-outs) and `days` nightly runs of `churn` changes."""
    with ledger.engine.begin() as conn:
        conn.execute(addresses_table.insert(), [{
            "list_id": LIST, "match_key": f"m{i}@example.org", "email": f"m{i}@example.org", "novi_id": f"n{i}",
            "status": "left" if i % 10 == 0 else "member", "how": "subscribed", "on_roster": i % 10 != 0,
            "eligible": True, "first_managed_at": NOW - timedelta(days=days), "last_eligible_at": NOW,
            "left_at": NOW - timedelta(days=i % days) if i % 10 == 0 else None} for i in range(members)])
        for day in range(days):
            at = NOW - timedelta(days=day)
            run_id = f"run-{day}"
            conn.execute(runs_table.insert(), [{"run_id": run_id, "flow_run_id": run_id, "attempt": 1,
                                                "run_name": run_id, "started_at": at, "ended_at": at, "kind": "full",
                                                "state": "completed", "message": "", "changes": churn, "failed": 0}])
            conn.execute(run_lists_table.insert(), [{"run_id": run_id, "list_id": LIST, "eligible": members,
                                                     "roster": members, "managed": members, "changes": churn,
                                                     "failed": 0}])
            conn.execute(changes_table.insert(), [{
                "run_id": run_id, "at": at, "list_id": LIST, "match_key": f"m{(day * churn + j) % members}@example.org",
                "email": f"m{(day * churn + j) % members}@example.org", "action": "subscribe", "outcome": "applied",
                "reason": "eligible, not on the list"} for j in range(churn)])


def timed(what) -> float:
    started = time.perf_counter()
    what()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ledger", help="a SQLAlchemy URL of an empty database; default: a fresh SQLite file")
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--churn", type=int, default=1036)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for attempt in range(args.repeat):
            url = args.ledger or f"sqlite:///{Path(scratch) / f'ledger-{attempt}.sqlite'}"
            ledger = Ledger(url)
            fill(ledger, args.members, args.days, args.churn)
            results.setdefault("first prune (a year down to 90 days)", []).append(
                timed(lambda: ledger_keeping.prune(ledger, 90, [LIST], now=NOW)))
            results.setdefault("nightly prune (one more day ages out)", []).append(
                timed(lambda: ledger_keeping.prune(ledger, 90, [LIST], now=NOW + timedelta(days=1))))
            for i in range(0, 1000, 10):  # a hundred erased opt-outs
                ledger_keeping.forget(ledger, f"m{i}@example.org", now=NOW)
            keys = [f"m{i}@example.org" for i in range(args.members)]  # what stand_ins reads of the frame
            members = pd.DataFrame({"match_key": keys, "email": keys,
                                    "novi_id": [f"n{i}" for i in range(args.members)]})
            results.setdefault(f"stand-ins for {args.members:,} members, 100 markers", []).append(
                timed(lambda: ledger_keeping.stand_ins(ledger, [LIST], members)))
            results.setdefault("one erasure (ledger side)", []).append(
                timed(lambda: ledger_keeping.forget(ledger, "m12345@example.org", now=NOW)))
            if args.ledger:
                with ledger.engine.begin() as conn:
                    for table in (changes_table, run_lists_table, runs_table, addresses_table):
                        conn.execute(table.delete())
    print(f"{ledger.location.split('/')[0]}… {args.members:,} members, {args.days} days of {args.churn:,} changes "
          f"({args.days * args.churn:,} rows), {args.repeat} repeats")
    for what, seconds in results.items():
        print(f"  {what}: median {statistics.median(seconds):.3f} s (min {min(seconds):.3f}, max {max(seconds):.3f})")


if __name__ == "__main__":
    main()
