"""The guards and the list lock through whole sync runs: refusals write nothing, overrides are one-shot."""

from __future__ import annotations

import pandas as pd
from prefect.artifacts import Artifact

from tasks.errors import GuardRefused
from tasks.ledger import Ledger
from tasks.report import SUMMARY_KEY, artifact_key
from tests.conftest import last_run, novi_record
from tests.fakes import FakeMailman, FakeNovi
from tests.runs.sync_harness import LIST, run, writes


def test_a_list_another_run_holds_is_not_touched(blocks, tmp_path):
    from tasks.ledger import ListBusy

    novi = FakeNovi([novi_record(f"m{i}", f"m{i}@example.org") for i in range(3)])
    mailman = FakeMailman({LIST: {}})
    with Ledger().lock([LIST], "another-run"):
        state, calls = run(novi, mailman, tmp_path)
    assert state.is_failed()
    assert isinstance(state.result(raise_on_failure=False), ListBusy)
    assert "being synced by another run" in state.message and "alive on this machine: wait" in state.message
    assert "unlock" not in state.message  # a live run's lock is not to be freed by hand
    assert calls == [] and not mailman.writes  # it did not even read
    assert last_run(Ledger(), "failed")["message"].startswith(LIST)
    again, _ = run(novi, mailman, tmp_path)  # the lock went with the other run
    assert again.is_completed()


def test_guard_refusal_writes_nothing_reports_and_override_is_one_shot(blocks, tmp_path):
    records = [novi_record(f"m{i}", f"m{i}@example.org") for i in range(30)]
    novi, mailman = FakeNovi(records), FakeMailman({LIST: {}})
    assert run(novi, mailman, tmp_path)[0].is_completed()
    for record in records[:15]:
        record["MemberStatus"] = "expired"  # half the list lapses overnight
    state, calls = run(novi, mailman, tmp_path)
    assert state.is_failed() and writes(calls) == []
    error = state.result(raise_on_failure=False)
    assert isinstance(error, GuardRefused) and "15 removals planned, 50% of its 30 managed members" in str(error)
    assert error.summary["state"] == "refused" and error.summary["lists"][0]["changes"]["unsubscribe"] == 15
    # a refusal's artifacts have keys of their own: the latest applied summary stays the last run's
    # that applied, and an approved run does not hold two versions of one key (issue 29, item 7)
    assert "Refused by a safety guard" in Artifact.get(artifact_key(SUMMARY_KEY, False, refused=True)).data
    assert "Refused by a safety guard" not in Artifact.get(SUMMARY_KEY).data
    assert "`novi-mailman-refused-plan-<list>` tables" in Artifact.get(artifact_key(SUMMARY_KEY, False, refused=True)).data
    assert Ledger().history("m0@example.org")["outcome"].iloc[0] == "refused by a guard"

    lifted, _ = run(novi, mailman, tmp_path, override_guards=True)
    assert lifted.is_completed() and lifted.result()["guards_overridden"] is True
    assert len(mailman.names(LIST)) == 15

    for record in records[15:25]:
        record["MemberStatus"] = "expired"  # the override did not persist
    assert isinstance(run(novi, mailman, tmp_path)[0].result(raise_on_failure=False), GuardRefused)


def test_source_collapse_is_refused(blocks, tmp_path):
    records = [novi_record(f"m{i}", f"m{i}@example.org") for i in range(40)]
    novi, mailman = FakeNovi(records), FakeMailman({LIST: {}})
    assert run(novi, mailman, tmp_path)[0].is_completed()
    novi.records = records[:20]  # a key scoped to fewer records: half the members vanish
    state, calls = run(novi, mailman, tmp_path)
    assert state.is_failed() and writes(calls) == []
    assert "20 members are eligible, down from 40" in state.message


def test_a_roster_that_comes_back_empty_once_is_refused_and_changes_no_memory(blocks, tmp_path):
    """A Mailman answering one consistent empty roster for a list the ledger knows as large: a
    roster collapse, refused like a collapsed source; nobody is remembered as having left."""
    records = [novi_record(f"m{i}", f"m{i}@example.org") for i in range(40)]
    novi, mailman = FakeNovi(records), FakeMailman({LIST: {}})
    first, _ = run(novi, mailman, tmp_path)
    assert first.is_completed() and len(mailman.rosters[LIST]) == 40
    remembered = Ledger().read([LIST])

    full = mailman.rosters[LIST]
    mailman.rosters[LIST] = {}  # one consistent, empty answer
    glitch, calls = run(novi, mailman, tmp_path)
    assert glitch.is_failed() and isinstance(glitch.result(raise_on_failure=False), GuardRefused)
    assert "the roster lacks 40 of the 40 members" in glitch.message and writes(calls) == []
    pd.testing.assert_frame_equal(Ledger().read([LIST]), remembered)  # no memory changed

    mailman.rosters[LIST] = full  # Mailman answers right again: nothing to do, nobody "left"
    after, calls = run(novi, mailman, tmp_path)
    assert after.is_completed() and writes(calls) == []
    assert set(Ledger().read([LIST])["status"]) == {"member"}


def test_a_list_emptied_by_hand_on_purpose_passes_with_the_guards_lifted(blocks, tmp_path):
    records = [novi_record(f"m{i}", f"m{i}@example.org") for i in range(40)]
    novi, mailman = FakeNovi(records), FakeMailman({LIST: {}})
    assert run(novi, mailman, tmp_path)[0].is_completed()
    mailman.rosters[LIST] = {}
    lifted, calls = run(novi, mailman, tmp_path, override_guards=True)
    assert lifted.is_completed() and writes(calls) == []  # they left: not re-added
    assert set(Ledger().read([LIST])["status"]) == {"left"}

