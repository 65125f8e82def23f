"""The ledger through whole sync runs: what a run records, remembers and adopts, on SQLite and PostgreSQL, and when the ledger fails."""

from __future__ import annotations


import pandas as pd
import pytest
import responses

from flows.sync import sync_lists
from tasks.ledger import Ledger, LedgerError
from tasks.ledger_schema import HEAD
from tests.conftest import last_run, novi_record
from tests.fixtures.ledgers.make import FIXTURES, SCHEMAS, shipped
from tests.fakes import MAILMAN_REST, NOVI_SITE, FakeMailman, FakeNovi
from tests.runs.sync_harness import LIST, NOVI_KEY, population, run, writes



def test_dry_run_leaves_the_ledger_untouched(blocks, tmp_path, isolated_ledger):
    records, roster = population()
    state, _ = run(FakeNovi(records), FakeMailman({LIST: roster}), tmp_path, dry_run=True)
    assert state.is_completed()
    assert not isolated_ledger.exists()
    assert state.result()["ledger"] == f"sqlite:///{isolated_ledger}"


def test_real_run_records_the_run_and_every_change(blocks, tmp_path):
    records, roster = population()
    state, _ = run(FakeNovi(records), FakeMailman({LIST: roster}), tmp_path)
    assert state.is_completed()
    ledger = Ledger()
    last = last_run(ledger)
    assert last["state"] == "completed" and last["changes"] == 7 and last["novi_members"] == 8
    assert last["lists"][LIST]["eligible"] == 5
    history = ledger.history("exp0@example.org")
    assert history[["action", "outcome", "reason"]].values.tolist() == [["unsubscribe", "applied", "status expired"]]
    remembered = ledger.read([LIST]).set_index("match_key")
    assert remembered.loc["cur0@example.org", "how"] == "adopted"
    assert remembered.loc["cur4@example.org", "how"] == "subscribed"
    assert "staff@example.org" not in remembered.index


def test_address_change_moves_the_subscription(blocks, tmp_path):
    novi = FakeNovi([novi_record("x", "old@example.org"), novi_record("y", "y@example.org")])
    mailman = FakeMailman({LIST: {}})
    run(novi, mailman, tmp_path)
    novi.records[0]["Email"] = "new@example.org"
    state, _ = run(novi, mailman, tmp_path)
    assert state.is_completed()
    assert set(mailman.names(LIST)) == {"new@example.org", "y@example.org"}
    reasons = state.result()["lists"][0]["reasons"]
    assert reasons["unsubscribe"] == {"address changed in Novi": 1}


def test_an_address_change_takes_the_members_digest_moderation_and_stopped_delivery_along(blocks, tmp_path):
    novi = FakeNovi([novi_record("x", "old@example.org"), novi_record("y", "y@example.org")])
    mailman = FakeMailman({LIST: {}})
    run(novi, mailman, tmp_path)
    mailman.rosters[LIST]["old@example.org"].update(delivery_mode="mime_digests", moderation_action="hold",
                                                    delivery_status="by_user")
    novi.records[0]["Email"] = "new@example.org"
    state, _ = run(novi, mailman, tmp_path)
    assert state.is_completed(), state.message
    moved = mailman.rosters[LIST]["new@example.org"]
    assert (moved["delivery_mode"], moved["moderation_action"], moved["delivery_status"]) == (
        "mime_digests", "hold", "by_user")
    assert "old@example.org" not in mailman.rosters[LIST]


def test_member_who_left_by_themselves_is_not_re_added(blocks, tmp_path):
    novi = FakeNovi([novi_record("a", "a@example.org"), novi_record("b", "b@example.org")])
    mailman = FakeMailman({LIST: {}})
    run(novi, mailman, tmp_path)
    del mailman.rosters[LIST]["a@example.org"]  # a unsubscribes through Mailman's own pages
    state, calls = run(novi, mailman, tmp_path)
    assert writes(calls) == []
    assert state.result()["lists"][0]["left_alone"] == {"left the list themselves": 1}
    assert set(mailman.names(LIST)) == {"b@example.org"}


def test_failed_ledger_write_fails_the_run_and_the_next_run_adopts_without_writing(blocks, tmp_path, monkeypatch):
    novi = FakeNovi([novi_record("a", "a@example.org")])
    mailman = FakeMailman({LIST: {}})

    def refuse(*args, **kwargs):
        raise LedgerError("the ledger at sqlite:///x failed: OperationalError; nothing of this run was stored")

    with monkeypatch.context() as patched:
        patched.setattr(Ledger, "record", refuse)
        state, _ = run(novi, mailman, tmp_path)
    assert state.is_failed() and "1 changes were applied to Mailman, but the ledger could not record" in state.message
    assert set(mailman.names(LIST)) == {"a@example.org"}  # Mailman holds the change
    # The report is then the only record of what was applied: it is published all the same.
    from prefect.artifacts import Artifact

    from tasks.report import SUMMARY_KEY
    assert "the ledger could not record them" in Artifact.get(SUMMARY_KEY).data
    assert state.result(raise_on_failure=False).summary["state"] == "failed"
    again, calls = run(novi, mailman, tmp_path)
    assert again.is_completed() and writes(calls) == []
    # The failed run's intent was settled: the address is the one it subscribed, in its history
    assert Ledger().read([LIST]).iloc[0]["how"] == "subscribed"
    (change,) = Ledger().history("a@example.org").to_dict("records")
    assert change["action"] == "subscribe" and change["outcome"] == "applied"


def test_a_ledger_that_goes_down_before_the_lock_is_released_still_leaves_the_report(blocks, tmp_path,
                                                                                      monkeypatch):
    """The report is the only record of applied changes the ledger could not store: it is
    published while the lock is held, so a release that fails too cannot lose it."""
    novi = FakeNovi([novi_record("a", "a@example.org")])
    mailman = FakeMailman({LIST: {}})
    down = {"now": False}
    begin = Ledger._begin

    def refuse(*args, **kwargs):
        down["now"] = True
        raise LedgerError("the ledger at sqlite:///x failed: OperationalError; nothing of this run was stored")

    def unavailable(self):
        if down["now"]:
            raise LedgerError("the ledger at sqlite:///x is unavailable: OperationalError")
        return begin(self)

    with monkeypatch.context() as patched:
        patched.setattr(Ledger, "record", refuse)
        patched.setattr(Ledger, "_begin", unavailable)
        state, _ = run(novi, mailman, tmp_path)
    assert state.is_failed() and set(mailman.names(LIST)) == {"a@example.org"}
    from prefect.artifacts import Artifact

    from tasks.report import SUMMARY_KEY
    assert "the ledger could not record them" in Artifact.get(SUMMARY_KEY).data
    assert list(tmp_path.glob("plan-*.csv"))


def test_run_that_cannot_read_novi_is_recorded_as_failed(blocks, tmp_path):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(f"{NOVI_SITE}/api/members", status=401)
        mock.get(f"{MAILMAN_REST}/3.1/system/versions", json={"mailman_version": "GNU Mailman 3.3.10"})
        state = sync_lists(list_id=LIST, novi_block="test-novi", mailman_block="test-mailman",
                           reports_dir=str(tmp_path), return_state=True)
    assert state.is_failed()
    last = last_run(Ledger(), "failed")
    assert "refused" in last["message"] and NOVI_KEY not in last["message"]


def test_ledger_block_points_the_run_at_postgresql(blocks, tmp_path, ledger_url):
    from pydantic import SecretStr

    from tasks.blocks import LedgerDatabase

    LedgerDatabase(url=SecretStr(ledger_url)).save("test-ledger", overwrite=True)
    novi = FakeNovi([novi_record("a", "a@example.org")])
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        novi.install(mock)
        FakeMailman({LIST: {}}).install(mock)
        state = sync_lists(list_id=LIST, novi_block="test-novi", mailman_block="test-mailman",
                           ledger_block="test-ledger", reports_dir=str(tmp_path), return_state=True)
    assert state.is_completed()
    assert state.result()["ledger"].split("://")[0] == ledger_url.split("://")[0]
    assert Ledger(ledger_url).read([LIST])["match_key"].tolist() == ["a@example.org"]


def test_a_ledger_that_fails_at_the_end_keeps_the_runs_outcome_and_report(blocks, tmp_path, monkeypatch):
    """Issue 27, item 9: changes applied, then the disk filled; the failure to release the lock
    replaced the run's outcome: its state said only "the ledger failed", the summary was dropped."""
    from tasks.ledger import LedgerError
    from tasks.run import Run

    full_disk = {"now": False}
    record, begin = Run.record, Ledger._begin

    def record_on_a_full_disk(self, *args, **kwargs):
        full_disk["now"] = True
        return record(self, *args, **kwargs)

    def failing_begin(self):
        if full_disk["now"]:
            raise LedgerError(f"the ledger at {self.location} failed: OperationalError")
        return begin(self)

    monkeypatch.setattr(Run, "record", record_on_a_full_disk)
    monkeypatch.setattr(Ledger, "_begin", failing_begin)
    novi = FakeNovi([novi_record(f"m{i}", f"m{i}@example.org") for i in range(3)])
    mailman = FakeMailman({LIST: {}})
    state, _ = run(novi, mailman, tmp_path)
    assert len(mailman.rosters[LIST]) == 3
    assert state.is_failed()
    assert state.message.startswith("3 changes were applied to Mailman, but the ledger could not record them")
    assert f"its lock on {LIST} could not be released" in state.message
    error = state.result(raise_on_failure=False)
    assert error.summary["changes"] and error.summary["message"] == state.message  # the report survives


def test_a_night_with_nothing_to_do_writes_no_ledger_row(blocks, tmp_path):
    """Issue 28: each run rewrote every managed row of its lists; now only what changed."""
    novi = FakeNovi([novi_record(f"m{i}", f"m{i}@example.org") for i in range(30)])
    mailman = FakeMailman({LIST: {}})
    first, _ = run(novi, mailman, tmp_path)
    assert first.is_completed() and first.result()["ledger_rows_written"] == 30
    quiet, calls = run(novi, mailman, tmp_path)
    assert quiet.message.startswith("No changes") and writes(calls) == []
    assert quiet.result()["ledger_rows_written"] == 0 and len(Ledger().read([LIST])) == 30
    novi.records[0]["Email"] = "moved@example.org"
    moved, _ = run(novi, mailman, tmp_path)
    assert moved.result()["ledger_rows_written"] == 1  # the new address; the old one's row is deleted



# a ledger from an older release (issue 31) --------------------------------------------------

@pytest.mark.parametrize("name, kind", [(name, "sqlite") for name in SCHEMAS]
                         + [(name, "postgresql") for name in ("1-9ae8fd5", "8-5b94437")])
def test_a_real_sync_on_every_shipped_ledger_upgrades_it_and_loses_nothing(name, kind, blocks, tmp_path, monkeypatch,
                                                                           request):
    """Ann and Bob are members, Cat left by herself, Dan was removed for lapsing (the fixture's
    history); Novi still has Ann, Bob and Cat active and Dan lapsed, and Eve has joined. The
    oldest and the newest column sets on PostgreSQL too (made there from the same DDL)."""
    monkeypatch.setenv("NOVI_MAILMAN_LEDGER", shipped(name, tmp_path, kind, request))
    records = [novi_record(f"n-{who}", f"{who}@example.org") for who in ("ann", "bob", "cat", "eve")]
    records.append(novi_record("n-dan", "dan@example.org", status="expired"))
    mailman = FakeMailman({LIST: {"Ann@example.org": "Ann A", "bob@example.org": "Bob"}})
    state, calls = run(FakeNovi(records), mailman, tmp_path)
    assert state.is_completed(), state.message
    assert sorted(mailman.rosters[LIST]) == ["ann@example.org", "bob@example.org", "eve@example.org"]  # Cat not re-added
    ledger = Ledger()
    memory = ledger.read([LIST]).set_index("match_key")["status"].to_dict()
    assert memory == {"ann@example.org": "member", "bob@example.org": "member", "cat@example.org": "left",
                      "dan@example.org": "removed", "eve@example.org": "member"}
    assert sorted(ledger.history("dan@example.org")["action"]) == ["subscribe", "unsubscribe"]  # the old history
    assert ledger.history("eve@example.org")["action"].tolist() == ["subscribe"]
    assert f"the ledger was upgraded from schema unversioned to {HEAD}" in state.result()["message"]


def test_a_dry_run_on_an_old_ledger_reads_it_and_leaves_it_byte_for_byte(blocks, tmp_path, isolated_ledger):
    import hashlib
    import shutil

    shutil.copy(FIXTURES / "ledger-1-9ae8fd5.sqlite", isolated_ledger)
    before = hashlib.sha256(isolated_ledger.read_bytes()).hexdigest()
    records = [novi_record(f"n-{who}", f"{who}@example.org") for who in ("ann", "bob", "cat")]
    mailman = FakeMailman({LIST: {"Ann@example.org": "Ann A", "bob@example.org": "Bob"}})
    state, calls = run(FakeNovi(records), mailman, tmp_path, dry_run=True)
    assert state.is_completed() and writes(calls) == []
    plan = pd.read_csv(state.result()["plan_csv"]).set_index("email")
    assert plan.loc["cat@example.org", "reason"] == "left the list themselves"  # read from the old ledger
    assert "subscribe" not in set(plan["action"])
    assert hashlib.sha256(isolated_ledger.read_bytes()).hexdigest() == before
