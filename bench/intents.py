"""What holding each batch as intended costs a run's apply (issue 28): the ledger writes alone.

    .venv/bin/python -m bench.intents [--ledger URL] [--changes 1036] [--batch 100] [--repeat 5]

A day's churn at 100,000 members is about 1,036 writes (README Performance); before each batch
the run writes its intents, after it marks Mailman's answers, and its record removes them. This
times exactly those ledger calls, with no Mailman, on a SQLite file (default) or the database a
URL names, and prints the median and range of the whole day's cost: what the apply pays on top
of Mailman's own time (34-39 s for that day on this machine's cores).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import delete

from tasks.core.schema import Action, Outcome, RunKind
from tasks.ledger import Journal, Lease, Ledger, intents_table

LIST = "bench-intents.example.org"


def one_day(ledger: Ledger, changes: int, batch_size: int) -> float:
    """Seconds of ledger work for a day of `changes` writes in batches of `batch_size`."""
    lease = Lease([LIST], uuid.uuid4().hex)
    journal = Journal(ledger, lease, str(uuid.uuid4()), "bench-day", RunKind.FULL, datetime.now(timezone.utc))
    records = [{"list_id": LIST, "email": f"m{i}@example.org", "match_key": f"m{i}@example.org", "novi_id": f"n{i}",
                "display_name": f"Member {i}", "previous": None, "reason": "eligible, not on the list",
                "delivery_mode": "regular", "moderation_action": "", "delivery_status": "enabled",
                "member_id": None, "mail": False, "request": None} for i in range(changes)]
    started = time.perf_counter()
    for first in range(0, changes, batch_size):
        batch, rows = uuid.uuid4().hex, records[first:first + batch_size]
        journal.intend(batch, Action.SUBSCRIBE, rows)
        journal.settled(batch, [{"email": r["email"], "outcome": Outcome.APPLIED, "detail": ""} for r in rows])
    with ledger.engine.begin() as conn:  # what the run's record does with them, in its transaction
        conn.execute(delete(intents_table).where(intents_table.c.lease == lease.token))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ledger", help="a SQLAlchemy URL; default: a fresh SQLite file")
    parser.add_argument("--changes", type=int, default=1036)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        ledger = Ledger(args.ledger or f"sqlite:///{Path(scratch) / 'ledger.sqlite'}")
        one_day(ledger, args.batch, args.batch)  # warm: tables, connections
        days = [one_day(ledger, args.changes, args.batch) for _ in range(args.repeat)]
    batches = -(-args.changes // args.batch)
    print(f"{ledger.location}: {args.changes:,} changes in {batches} batches: median {statistics.median(days):.3f} s "
          f"(min {min(days):.3f}, max {max(days):.3f}; {statistics.median(days) / batches * 1000:.1f} ms a batch)")


if __name__ == "__main__":
    main()
