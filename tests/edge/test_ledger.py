"""The ledger database on SQLite and PostgreSQL: schema, round trip, history, concurrency, failure."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from tasks.ledger import Ledger, LedgerError, RunRecord
from tasks.core.members import members_frame
from tasks.core.planner import LEDGER_COLUMNS, plan_changes, settle
from tasks.core.rules import parse_rules
from tests.conftest import last_run, novi_record, roster_frame

T0 = datetime(2026, 11, 1, 2, 15, tzinfo=timezone.utc)


def planned_run(list_id: str, n: int, now: datetime = T0, run_id: str = "run-1"):
    """A plan that subscribes n members to list_id, every change applied."""
    records = [novi_record(f"{list_id}-{i}", f"m{i}@example.org") for i in range(n)]
    rules = parse_rules({"lists": [{"list_id": list_id}]})
    p = plan_changes(members_frame(records), {list_id: roster_frame(list_id, [])}, rules, now=pd.Timestamp(now))
    outcomes = p.changes.assign(outcome="applied", detail="")
    run = RunRecord(run_id=run_id, run_name=f"name-{run_id}", started_at=now, ended_at=now + timedelta(seconds=5),
                    state="completed", message=f"{n} changes applied", novi_members=n)
    return p, outcomes, run


def test_a_quiet_night_writes_only_the_rows_that_changed(ledger_url):
    """Issue 28: every managed row was rewritten each run (its last-seen stamp moved). Planned
    from what the ledger holds, a night with nothing new writes no row; one change, one row."""
    list_id = "quiet.example.org"
    ledger = Ledger(ledger_url)
    records = [novi_record(f"q-{i}", f"m{i}@example.org") for i in range(50)]
    rules = parse_rules({"lists": [{"list_id": list_id}]})
    roster = roster_frame(list_id, [(f"m{i}@example.org", f"Pat Q-{i}".upper().replace("PAT", "Pat"))
                                    for i in range(50)])

    def night(when: datetime, people) -> int:
        before = ledger.read([list_id])
        p = plan_changes(members_frame(people), {list_id: roster}, rules, before, now=pd.Timestamp(when))
        outcomes = p.changes.assign(outcome="applied", detail="")
        run = RunRecord(run_id=f"run-{when:%d%H}", run_name="night", started_at=when, ended_at=when, state="completed",
                        message="", novi_members=len(people))
        return ledger.record(run, [list_id], settle(p.memory, outcomes), outcomes, p.figures, before=before)

    assert night(T0, records) == 50  # adopted: every row is new
    first = ledger.read([list_id]).sort_values("match_key", ignore_index=True)
    assert night(T0 + timedelta(days=1), records) == 0
    # One member moves address: one row written (the new address), one deleted (the old)
    assert night(T0 + timedelta(days=2), [{**records[0], "Email": "n0@example.org"}, *records[1:]]) == 1
    after = ledger.read([list_id]).sort_values("match_key", ignore_index=True)
    assert set(after["match_key"]) == {f"m{i}@example.org" for i in range(1, 50)} | {"n0@example.org"}
    same = after.loc[after["match_key"] != "n0@example.org"].reset_index(drop=True)
    pd.testing.assert_frame_equal(same, first.loc[first["match_key"] != "m0@example.org"].reset_index(drop=True))


def test_schema_is_created_once_and_an_empty_ledger_reads_empty(ledger_url):
    first = Ledger(ledger_url)
    frame = first.read(["a.example.org"])
    assert frame.empty and list(frame.columns) == LEDGER_COLUMNS
    Ledger(ledger_url)  # opening again is harmless
    assert last_run(first) is None


def test_a_run_round_trips(ledger_url):
    ledger = Ledger(ledger_url)
    p, outcomes, run = planned_run("a.example.org", 3)
    ledger.record(run, ["a.example.org"], settle(p.memory, outcomes), outcomes, p.figures)
    stored = ledger.read(["a.example.org"]).sort_values("match_key", ignore_index=True)
    expected = settle(p.memory, outcomes).sort_values("match_key", ignore_index=True)
    pd.testing.assert_frame_equal(stored, expected[LEDGER_COLUMNS], check_dtype=False)
    last = last_run(ledger)
    assert last["run_id"] == "run-1" and last["changes"] == 3 and last["novi_members"] == 3
    assert last["lists"]["a.example.org"]["eligible"] == 3
    assert ledger.read(["other.example.org"]).empty


def test_on_sqlite_rows_are_stored_as_sqlalchemy_would_store_them(tmp_path):
    """Rows reach SQLite as text without SQLAlchemy's per-row processing: the text must be the
    one its DATETIME type writes and reads, whatever zone or precision a stamp came in."""
    from sqlalchemy import DateTime, text

    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    p, outcomes, run = planned_run("a.example.org", 3)
    memory = settle(p.memory, outcomes).sort_values("match_key", ignore_index=True)
    memory["left_at"] = pd.Series([pd.Timestamp("2026-11-02 03:04:05.000007", tz="Europe/Paris"),
                                   pd.Timestamp("2026-11-02 03:04:05", tz="UTC"), pd.NaT],
                                  dtype="datetime64[us, UTC]")
    ledger.record(run, ["a.example.org"], memory, outcomes, p.figures)
    with ledger.engine.connect() as conn:
        stored = conn.execute(text("select left_at, first_managed_at, on_roster from managed_addresses "
                                   "order by match_key")).all()
        at = conn.execute(text("select distinct at from changes")).scalar_one()
    dialect = ledger.engine.dialect
    sqlalchemys = DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
    assert [row[0] for row in stored] == ["2026-11-02 02:04:05.000007", "2026-11-02 03:04:05.000000", None]
    assert [row[0] for row in stored[:2]] == [sqlalchemys(stamp.to_pydatetime().astimezone(timezone.utc))
                                              for stamp in memory["left_at"][:2]]
    assert stored[0][1] == sqlalchemys(memory["first_managed_at"][0].to_pydatetime()) and stored[0][2] == 1
    assert at == sqlalchemys(run.ended_at)
    pd.testing.assert_frame_equal(ledger.read(["a.example.org"]).sort_values("match_key", ignore_index=True),
                                  memory[LEDGER_COLUMNS], check_dtype=False)


def test_each_list_is_compared_with_its_own_last_completed_run(ledger_url):
    """Two deployments sharing a ledger: the newest run covering *other* lists must not hide a
    list's own figures from the collapse guard (it would then compare with nothing)."""
    ledger = Ledger(ledger_url)
    for run_id, list_id, n, when in (("r1", "a.example.org", 5, T0), ("r2", "b.example.org", 2, T0 + timedelta(days=1))):
        p, outcomes, run = planned_run(list_id, n, when, run_id)
        ledger.record(run, [list_id], settle(p.memory, outcomes), outcomes, p.figures)
    p, outcomes, run = planned_run("a.example.org", 3, T0 + timedelta(days=2), "r3")
    ledger.record(replace(run, state="failed"), ["a.example.org"], settle(p.memory, outcomes), outcomes, p.figures)

    assert last_run(ledger)["run_id"] == "r2"  # the newest run overall knows nothing of list a
    figures = ledger.last_figures(["a.example.org", "b.example.org", "c.example.org"])
    assert figures["a.example.org"]["run_id"] == "r1" and figures["a.example.org"]["eligible"] == 5
    assert figures["b.example.org"]["eligible"] == 2 and "c.example.org" not in figures


def test_history_is_newest_first_across_lists_and_runs(ledger_url):
    ledger = Ledger(ledger_url)
    for run_id, list_id, when in (("r1", "a.example.org", T0), ("r2", "b.example.org", T0 + timedelta(days=1))):
        p, outcomes, run = planned_run(list_id, 2, when, run_id)
        ledger.record(run, [list_id], settle(p.memory, outcomes), outcomes, p.figures)
    history = ledger.history(" M0@Example.org ")
    assert history["list_id"].tolist() == ["b.example.org", "a.example.org"]
    assert history["run_name"].tolist() == ["name-r2", "name-r1"]
    assert set(history["action"]) == {"subscribe"} and set(history["outcome"]) == {"applied"}
    assert ledger.history("nobody@example.org").empty
    assert sorted(ledger.memberships("m0@example.org")["list_id"]) == ["a.example.org", "b.example.org"]


def test_concurrent_runs_on_different_lists(ledger_url):
    Ledger(ledger_url)  # schema first, as the first run would
    errors: list[BaseException] = []

    def one(list_id: str, run_id: str) -> None:
        try:
            ledger = Ledger(ledger_url)
            p, outcomes, run = planned_run(list_id, 1500, run_id=run_id)
            ledger.record(run, [list_id], settle(p.memory, outcomes), outcomes, p.figures)
        except BaseException as exc:  # collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(f"l{i}.example.org", f"run-{i}")) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ledger = Ledger(ledger_url)
    for i in range(3):
        assert len(ledger.read([f"l{i}.example.org"])) == 1500


def test_a_write_failing_half_way_leaves_the_ledger_as_it_was(ledger_url):
    ledger = Ledger(ledger_url)
    p, outcomes, run = planned_run("a.example.org", 3)
    ledger.record(run, ["a.example.org"], settle(p.memory, outcomes), outcomes, p.figures)
    before = ledger.read(["a.example.org"])

    p2, outcomes2, run2 = planned_run("a.example.org", 5, run_id="run-2")
    broken = outcomes2.copy()
    broken.loc[broken.index[-1], "action"] = None  # NOT NULL: fails after the state was replaced
    with pytest.raises(LedgerError, match="nothing of this run was stored"):
        ledger.record(run2, ["a.example.org"], settle(p2.memory, outcomes2), broken, p2.figures)
    pd.testing.assert_frame_equal(ledger.read(["a.example.org"]), before)
    assert last_run(ledger)["run_id"] == "run-1"


def test_unreachable_database_is_a_clear_error_without_its_password():
    with pytest.raises(LedgerError) as caught:
        Ledger("postgresql+psycopg://sync:TOPSECRET@127.0.0.1:1/ledger")
    assert "TOPSECRET" not in str(caught.value) and "***" in str(caught.value)


def test_default_location_follows_the_environment(tmp_path, monkeypatch):
    from tasks.ledger import default_url

    monkeypatch.setenv("NOVI_MAILMAN_LEDGER", str(tmp_path / "x.sqlite"))
    assert default_url() == f"sqlite:///{tmp_path / 'x.sqlite'}"
    monkeypatch.delenv("NOVI_MAILMAN_LEDGER")
    monkeypatch.setenv("NOVI_MAILMAN_HOME", str(tmp_path / "home"))
    assert default_url() == f"sqlite:///{tmp_path / 'home' / 'ledger.sqlite'}"


# the per-list lock ------------------------------------------------------------------------

def test_a_list_is_held_by_one_run_at_a_time(ledger_url):
    from tasks.ledger import ListBusy

    ledger = Ledger(ledger_url)
    with ledger.lock(["a.example.org", "b.example.org"], "run-1"):
        with pytest.raises(ListBusy, match="a.example.org is being synced by another run"):
            with Ledger(ledger_url).lock(["a.example.org"], "run-2"):
                pytest.fail("two runs held one list")
        with Ledger(ledger_url).lock(["c.example.org"], "run-3"):
            pass  # another list is free
    with ledger.lock(["a.example.org"], "run-4"):
        pass  # released at the end of the first run


def test_a_run_waiting_for_a_lock_says_so(ledger_url):
    """Issue 29, item 3: a member run or an approved plan waits up to 15 minutes for the lists'
    lock; its log said nothing meanwhile."""
    from datetime import timedelta

    from tasks.ledger import ListBusy

    said: list[str] = []
    with Ledger(ledger_url).lock(["a.example.org"], "run-1"):
        with pytest.raises(ListBusy):
            with Ledger(ledger_url).lock(["a.example.org"], "run-2", wait=timedelta(seconds=0.3), tell=said.append):
                pytest.fail("two runs held one list")
    assert said == ["Waiting for the lock of a.example.org: another run holds it; 0 min more at most."]


def test_locks_of_dead_runs_are_taken_over(ledger_url):
    import socket
    import subprocess

    from tasks.ledger import locks_table

    ledger = Ledger(ledger_url)
    dead_pid = subprocess.Popen(["true"])  # a process of this host that has surely ended
    dead_pid.wait()
    now = datetime.now(timezone.utc)
    with ledger.engine.begin() as conn:
        conn.execute(locks_table.insert(), [
            {"list_id": "dead.example.org", "run_id": "r-dead", "holder": f"{socket.gethostname()}:{dead_pid.pid}",
             "acquired_at": now, "heartbeat_at": now},
            {"list_id": "silent.example.org", "run_id": "r-silent", "holder": "other-host:1",
             "acquired_at": now - timedelta(hours=1), "heartbeat_at": now - timedelta(minutes=11)},
            {"list_id": "alive.example.org", "run_id": "r-alive", "holder": "other-host:1",
             "acquired_at": now, "heartbeat_at": now}])
    with ledger.lock(["dead.example.org", "silent.example.org"], "run-new"):
        pass
    from tasks.ledger import ListBusy
    with pytest.raises(ListBusy):
        with ledger.lock(["alive.example.org"], "run-new-2"):
            pass
    with pytest.raises(ListBusy, match="held by a run that is alive .* unlock alive.example.org --force"):
        ledger.unlock("alive.example.org")  # its heartbeat is fresh: it may be writing right now
    assert ledger.unlock("alive.example.org", force=True) == 1
    with ledger.lock(["alive.example.org"], "run-new-3"):
        pass


def test_unlock_refuses_the_lock_of_a_live_run_on_this_machine(ledger_url):
    """Issue 27, item 6: `unlock` freed a live run's lock and two runs wrote one list at once."""
    import multiprocessing

    from tasks.ledger import ListBusy
    from tests.racers import hold_the_lock

    context = multiprocessing.get_context("spawn")
    held, release = context.Event(), context.Event()
    holder = context.Process(target=hold_the_lock, args=(ledger_url, "live-run", held, release))
    holder.start()
    try:
        assert held.wait(60), "the holder did not take the lock"
        ledger = Ledger(ledger_url)
        with pytest.raises(ListBusy) as refused:
            ledger.unlock("race.example.org")
        assert f"process ({holder.pid}) is alive on this machine: wait for it to end" in str(refused.value)
        with pytest.raises(ListBusy) as busy:  # nor does a run that finds it busy suggest unlocking it
            with ledger.lock(["race.example.org"], "second-run"):
                pass
        assert "unlock" not in str(busy.value) and "wait for it to end" in str(busy.value)
        assert ledger.unlock("race.example.org", force=True) == 1  # the operator's word, on purpose
    finally:
        release.set()
        holder.join(30)
    assert holder.exitcode == 0


def test_the_lock_is_renewed_while_the_run_lasts(ledger_url):
    import time

    from sqlalchemy import select

    from tasks.ledger import locks_table

    ledger = Ledger(ledger_url)
    with ledger.lock(["a.example.org"], "run-1", stale_after=timedelta(seconds=0.4)):
        with ledger.engine.connect() as conn:
            first = conn.execute(select(locks_table.c.heartbeat_at)).scalar_one()
        time.sleep(0.5)
        with ledger.engine.connect() as conn:
            later = conn.execute(select(locks_table.c.heartbeat_at)).scalar_one()
    assert later > first


def test_a_ledger_from_before_run_kinds_is_upgraded(tmp_path):
    """The runs table as the first two column sets had it (no kind, no attempts)."""
    import shutil

    from tests.fixtures.ledgers.make import FIXTURES

    path = tmp_path / "old.sqlite"
    shutil.copy(FIXTURES / "ledger-2-5625b09.sqlite", path)
    ledger = Ledger(f"sqlite:///{path}")
    assert last_run(ledger)["run_id"] == "run-2"


def test_two_runs_taking_over_one_stale_lock_at_once_never_both_hold_it(ledger_url):
    """Real processes released by one barrier, a lock row 30 minutes stale: exactly one run takes
    it over. (Measured on the old code, which deleted by list id: both held it in 10 of 10 trials.)"""
    import multiprocessing

    from tasks.ledger import locks_table
    from tests.racers import take_the_lock

    ctx = multiprocessing.get_context("spawn")  # no fork of a process that runs threads
    ledger = Ledger(ledger_url)
    for trial in range(4):
        stale = datetime.now(timezone.utc) - timedelta(minutes=30)
        with ledger.engine.begin() as conn:
            conn.execute(locks_table.delete())
            conn.execute(locks_table.insert(), [{"list_id": "race.example.org", "run_id": "r-dead",
                                                 "holder": "gone-host:1", "acquired_at": stale,
                                                 "heartbeat_at": stale}])
        barrier, events = ctx.Barrier(2), ctx.Queue()
        racers = [ctx.Process(target=take_the_lock, args=(barrier, ledger_url, f"run-{trial}-{i}", events))
                  for i in range(2)]
        for racer in racers:
            racer.start()
        results = [events.get(timeout=120) for _ in racers]
        for racer in racers:
            racer.join(30)
            assert racer.exitcode == 0
        assert sorted(kind for kind, _, _ in results) == ["busy", "held"], f"trial {trial}: {results}"


def test_a_run_whose_lock_was_taken_over_finds_out_before_its_next_write(ledger_url):
    import time

    from sqlalchemy import update

    from tasks.ledger import LockLost, locks_table

    ledger = Ledger(ledger_url)
    with ledger.lock(["a.example.org"], "run-1", stale_after=timedelta(seconds=0.4)) as lease:
        lease.check()  # held: no error
        with ledger.engine.begin() as conn:  # another run judged it dead and took it over
            conn.execute(update(locks_table).values(run_id="run-2", holder="other:2", lease="theirs"))
        time.sleep(0.5)
        with pytest.raises(LockLost, match="taken over by another run"):
            lease.check()
    with ledger.engine.connect() as conn:  # our release left the other run's hold alone
        assert conn.execute(locks_table.select()).mappings().one()["lease"] == "theirs"


def test_a_run_whose_heartbeat_keeps_failing_stops_writing(ledger_url, monkeypatch):
    import time

    from tasks.ledger import LockLost

    ledger = Ledger(ledger_url)
    with ledger.lock(["a.example.org"], "run-1", stale_after=timedelta(seconds=0.4)) as lease:
        def unavailable():
            raise LedgerError("the ledger at x is unavailable: OperationalError")
        monkeypatch.setattr(ledger, "_begin", unavailable)
        time.sleep(0.6)
        with pytest.raises(LockLost, match="could not be renewed"):
            lease.check()
        monkeypatch.undo()


def test_a_ledger_from_before_preferences_is_read_by_a_dry_run_and_upgraded_by_a_real_one(tmp_path):
    """The addresses table before it remembered preferences (tests/fixtures/ledgers)."""
    import shutil
    import sqlite3

    from tests.fixtures.ledgers.make import FIXTURES

    path = tmp_path / "old.sqlite"
    shutil.copy(FIXTURES / "ledger-4-8cf54b4.sqlite", path)
    lid = "members.example.org"
    dry = Ledger(f"sqlite:///{path}", create=False).read([lid])
    assert sorted(dry["match_key"]) == ["ann@example.org", "bob@example.org", "cat@example.org", "dan@example.org"]
    assert dry["delivery_mode"].isna().all()
    with sqlite3.connect(path) as db:
        assert "delivery_mode" not in {row[1] for row in db.execute("PRAGMA table_info(managed_addresses)")}
    real = Ledger(f"sqlite:///{path}").read([lid])
    assert sorted(real["match_key"]) == sorted(dry["match_key"])
    with sqlite3.connect(path) as db:
        assert {"delivery_mode", "moderation_action", "delivery_status"} <= {
            row[1] for row in db.execute("PRAGMA table_info(managed_addresses)")}
