"""What a spawned racer runs: its own module, so a new process imports the ledger alone, not a test module
(3.2 s of pandas, Prefect and the planner per process instead of 0.8 s)."""

from __future__ import annotations

from tasks.ledger import Ledger, ListBusy


def take_the_lock(barrier, url: str, run_id: str, events) -> None:
    """One run taking the list's lock the moment the barrier lets every racer go."""
    import time

    from sqlalchemy import text

    ledger = Ledger(url)
    with ledger.engine.connect() as conn:  # connected before the barrier: only the takeover races
        conn.execute(text("select 1"))
    barrier.wait()
    try:
        with ledger.lock(["race.example.org"], run_id):
            events.put(("held", run_id, time.time()))
            time.sleep(1.0)  # hold it long enough for the other to see it held
    except ListBusy:
        events.put(("busy", run_id, time.time()))


def hold_the_lock(url: str, run_id: str, held, release) -> None:
    """A live run: it holds the list's lock until told to end (a forced unlock takes it away,
    so its own release then finds nothing to release)."""
    ledger = Ledger(url)
    with ledger.lock(["race.example.org"], run_id):
        held.set()
        release.wait(60)
