"""The sync flow under a Prefect test server, against stateful fakes of Novi and Mailman."""

from __future__ import annotations

import json
import math

import pandas as pd
from prefect.client.orchestration import get_client
import pytest
import responses
from prefect.artifacts import Artifact

import tasks.run as run_module
from flows.sync import sync_lists
from tasks.blocks import MailmanCredentials, NoviCredentials
from tasks.errors import ChangesFailed, GuardRefused
from tasks.ledger import Ledger, LedgerError
from tasks.mailman import apply_batch
from tasks.report import PLAN_KEY, SUMMARY_KEY, artifact_key
from tests.conftest import last_run, novi_record
from tests.fakes import MAILMAN_REST, NOVI_SITE, FakeMailman, FakeNovi


NOVI_KEY = "NOVI-SECRET-KEY-0123456789"
MAILMAN_PASSWORD = "MAILMAN-SECRET-PW-987"
LIST = "members.example.org"


@pytest.fixture(scope="module")
def blocks(prefect_server):
    NoviCredentials(site_url=f"{NOVI_SITE}/api/", api_key=NOVI_KEY).save("test-novi", overwrite=True)
    MailmanCredentials(rest_url=MAILMAN_REST, password=MAILMAN_PASSWORD).save("test-mailman", overwrite=True)


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(run_module, "apply_batch", apply_batch.with_options(retry_delay_seconds=0))


def population():
    """5 eligible (2 already on the list, one under an old name), 3 lapsed on the list, 1 stranger."""
    records = [novi_record(f"cur-{i}", f"cur{i}@example.org", first="Cur", last=str(i)) for i in range(5)]
    records += [novi_record(f"exp-{i}", f"exp{i}@example.org", status="expired") for i in range(3)]
    roster = {"cur0@example.org": "Cur 0", "cur1@example.org": "Old Name",
              "exp0@example.org": "E0", "exp1@example.org": "E1", "exp2@example.org": "E2",
              "staff@example.org": "Staff"}
    return records, roster


def run(novi, mailman, tmp_path, **params):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        novi.install(mock)
        mailman.install(mock)
        state = sync_lists(list_id=LIST, novi_block="test-novi", mailman_block="test-mailman",
                           reports_dir=str(tmp_path), return_state=True, **params)
        calls = [(c.request.method, c.request.url) for c in mock.calls]
    return state, calls


def writes(calls):
    return [c for c in calls if c[0] != "GET"]


def test_dry_run_reports_and_writes_nothing(blocks, tmp_path):
    records, roster = population()
    novi, mailman = FakeNovi(records), FakeMailman({LIST: roster})
    state, calls = run(novi, mailman, tmp_path, dry_run=True)
    assert state.is_completed()
    summary = state.result()
    assert summary["dry_run"] is True and summary["state"] == "completed"
    assert summary["lists"][0]["changes"] == {"subscribe": 3, "unsubscribe": 3, "hold": 0, "release": 0, "rename": 1,
                                              "moderate": 0, "unmoderate": 0}
    assert summary["outcomes"] == {"planned (dry run)": 7}
    assert writes(calls) == [] and not mailman.writes
    # A dry run's artifacts are its own (never a real run's latest) and say what they are.
    markdown = Artifact.get(artifact_key(SUMMARY_KEY, dry_run=True)).data
    assert markdown.startswith("# Dry run of the Novi → Mailman sync (nothing written)")
    assert "Dry run: nothing was written" in markdown and "status expired" in markdown
    assert "unmanaged" in markdown and summary["plan_csv"] in markdown and "file://" not in markdown
    table = json.loads(Artifact.get(artifact_key(PLAN_KEY, True, LIST)).data)
    assert [row["action"] for row in table] == ["unsubscribe"] * 3 + ["rename", "subscribe", "subscribe", "subscribe",
                                                                      "left alone"]
    assert {row["outcome"] for row in table[:-1]} == {"planned (dry run)"}
    assert table[3]["change"] == "Old Name → Cur 1" and table[3]["novi_id"] == "cur-1"
    assert state.message == "Dry run, nothing written; planned: +3 −3 renamed 1 on members.example.org"
    assert state.is_completed() and state.message.startswith("Dry run, nothing written")  # not a sync to the alerts
    csv = open(summary["plan_csv"]).read()
    assert "staff@example.org" in csv and "unmanaged" in csv


def test_real_run_applies_only_the_difference_in_batches_then_nothing_is_left(blocks, tmp_path):
    records, roster = population()
    novi, mailman = FakeNovi(records, cap=3), FakeMailman({LIST: roster})
    state, calls = run(novi, mailman, tmp_path, batch_size=2)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["outcomes"] == {"applied": 7}
    assert summary["message"] == "+3 −3 renamed 1 on members.example.org (7 changes applied)"
    assert state.message == summary["message"] and state.name == "Completed"
    # k subscribes -> k calls; r removals -> ceil(r / batch) mass unsubscribes; one rename
    assert mailman.writes == {"subscribe": 3, "mass_unsubscribe": math.ceil(3 / 2), "rename": 1}
    # and the run says so itself: Mailman's version, the pages needed (8 records, 3 a page)
    # and a roster page; one page of the members whose delivery bounced, and no held-member
    # page, as the list's rule holds nobody; one page of the list's bans, one of the global
    # bans and one of the list's pending requests; the preferences of the 3 lapsed members
    # it removes (they may renew)
    assert summary["http_calls"] == {"mailman_read": 1, "novi_page": math.ceil(8 / 3), "roster_page": 1,
                                     "bouncing_page": 1, "ban_page": 2, "request_page": 1, "preferences_read": 3,
                                     "subscribe": 3, "mass_unsubscribe": 2, "rename": 1}
    assert summary["flow_run_id"] == str(state.state_details.flow_run_id)
    assert set(summary["phases_s"]) >= {"extract_members", "extract_rosters", "plan", "apply", "report"}
    assert mailman.names(LIST) == {f"cur{i}@example.org": f"Cur {i}" for i in range(5)} | {
        "staff@example.org": "Staff"}

    again, calls = run(novi, mailman, tmp_path, batch_size=2)
    assert again.is_completed() and again.message.startswith("No changes")
    assert again.result()["message"] == "No changes: every list is already in step with Novi"
    assert writes(calls) == []
    # reads only: Mailman's version, ceil(8 / 3) Novi pages, one roster page and its bounced
    # members' search (the rule holds nobody: no held search), the two ban pages and the
    # requests page
    assert len(calls) == 1 + math.ceil(8 / 3) + 1 + 1 + 2 + 1


def test_a_banned_eligible_member_never_fails_a_run_and_a_quiet_rerun_writes_nothing(blocks, tmp_path):
    """A banned address once failed every run ("1 of 136 changes failed; rerun to retry them"),
    for ever. Bans on the list, global and by pattern are read once per run and left alone."""
    records = [novi_record("a", "list-banned@example.org"), novi_record("b", "everywhere@example.org"),
               novi_record("c", "x@spam.example.org"), novi_record("d", "fine@example.org")]
    novi, mailman = FakeNovi(records), FakeMailman({LIST: {}})
    mailman.bans = {LIST: ["list-banned@example.org", r"^.*@spam\.example\.org$"], None: ["everywhere@example.org"]}
    state, calls = run(novi, mailman, tmp_path)
    assert state.is_completed(), state.message
    assert set(mailman.names(LIST)) == {"fine@example.org"}
    assert [c for c in writes(calls)] == [("POST", f"{MAILMAN_REST}/3.1/members")]  # the one unbanned member
    summary = state.result()
    assert summary["lists"][0]["banned"] == 3 and summary["lists"][0]["left_alone"] == {"banned in Mailman": 3}
    assert "banned in Mailman" in Artifact.get(SUMMARY_KEY).data and "list-banned@example.org" in Artifact.get(SUMMARY_KEY).data
    assert summary["http_calls"]["ban_page"] == 2  # the list's bans and the global ones, one page each

    again, calls = run(novi, mailman, tmp_path)
    assert again.is_completed() and writes(calls) == []


def test_a_pending_request_of_an_eligible_member_is_resolved_and_others_are_left_to_their_owners(blocks, tmp_path):
    """The subscribe answered 409 "Subscription request already pending" and the run said
    "pending" every night, for ever."""
    records = [novi_record("a", "asked@example.org"), novi_record("b", "confirming@example.org"),
               novi_record("c", "lapsed@example.org", status="expired")]
    novi, mailman = FakeNovi(records), FakeMailman({LIST: {}})
    mailman.requests = {LIST: [{"email": "asked@example.org", "token": "t1", "token_owner": "moderator"},
                               {"email": "confirming@example.org", "token": "t2", "token_owner": "subscriber"},
                               {"email": "lapsed@example.org", "token": "t3", "token_owner": "moderator"}]}
    state, _ = run(novi, mailman, tmp_path)
    assert state.is_completed(), state.message
    assert set(mailman.names(LIST)) == {"asked@example.org"}
    assert [r["token"] for r in mailman.requests[LIST]] == ["t2", "t3"]  # the others untouched
    item = state.result()["lists"][0]
    assert (item["requests_for_moderator"], item["requests_for_member"]) == (1, 1)
    assert item["outcomes"] == {"applied": 1}
    again, calls = run(novi, mailman, tmp_path)
    assert again.is_completed() and writes(calls) == []


def test_refused_address_fails_the_run_with_counts_and_a_rerun_finishes(blocks, tmp_path):
    records, roster = population()
    novi, mailman = FakeNovi(records), FakeMailman({LIST: roster})
    mailman.fail_subscribe = {"cur2@example.org"}
    state, _ = run(novi, mailman, tmp_path)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ChangesFailed)
    assert str(error) == "1 of 7 changes failed; rerun to retry them"
    assert error.summary["outcomes"] == {"applied": 6, "failed": 1}
    assert "Invalid Parameter" in Artifact.get(SUMMARY_KEY).data or "failed" in Artifact.get(SUMMARY_KEY).data

    mailman.fail_subscribe = set()
    rerun, calls = run(novi, mailman, tmp_path)
    assert rerun.is_completed()
    assert rerun.result()["outcomes"] == {"applied": 1}  # exactly the remainder
    assert writes(calls) == [("POST", f"{MAILMAN_REST}/3.1/members")]


def test_transient_write_failure_is_retried_by_the_batch(blocks, tmp_path, fast_retries):
    records, roster = population()
    novi, mailman = FakeNovi(records), FakeMailman({LIST: roster})
    mailman.unavailable_writes = 1
    state, _ = run(novi, mailman, tmp_path)
    assert state.is_completed(), state.message
    assert set(mailman.names(LIST)) == {f"cur{i}@example.org" for i in range(5)} | {"staff@example.org"}


def test_write_failing_past_its_retries_fails_the_run(blocks, tmp_path, fast_retries):
    records, roster = population()
    novi, mailman = FakeNovi(records), FakeMailman({LIST: roster})
    mailman.unavailable_writes = 1000
    state, _ = run(novi, mailman, tmp_path)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ChangesFailed)
    assert error.summary["outcomes"]["failed"] >= 3
    assert "rerun to retry them" in str(error)


def test_empty_source_is_refused_before_any_write(blocks, tmp_path):
    _, roster = population()
    novi, mailman = FakeNovi([]), FakeMailman({LIST: roster})
    state, calls = run(novi, mailman, tmp_path)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, GuardRefused)
    assert "allow_empty" in str(error) and LIST in str(error)
    assert error.summary["state"] == "refused"
    assert writes(calls) == []


def test_quarantined_records_are_listed_for_membership_staff(blocks, tmp_path):
    from tasks.report import QUARANTINE_KEY

    records, roster = population()
    records += [novi_record("broken-1", "nobody@localhost"), novi_record("broken-2", None)]
    state, _ = run(FakeNovi(records), FakeMailman({LIST: roster}), tmp_path, dry_run=True)
    rows = json.loads(Artifact.get(artifact_key(QUARANTINE_KEY, dry_run=True)).data)
    assert sorted((r["novi_id"], r["reason"]) for r in rows) == [
        ("broken-1", "domain without a dot"), ("broken-2", "no email address in Novi")]
    assert state.result()["quarantine_reasons"] == {"domain without a dot": 1, "no email address in Novi": 1}


def test_secrets_never_reach_the_summary_or_artifacts(blocks, tmp_path):
    records, roster = population()
    state, _ = run(FakeNovi(records), FakeMailman({LIST: roster}), tmp_path, dry_run=True)
    captured = (json.dumps(state.result()) + Artifact.get(artifact_key(SUMMARY_KEY, True)).data
                + Artifact.get(artifact_key(PLAN_KEY, True, LIST)).data)
    assert NOVI_KEY not in captured and MAILMAN_PASSWORD not in captured


# the ledger, through whole runs ----------------------------------------------------------

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


@pytest.mark.parametrize("run_name", ["nightly/2026-12-01", "../../../escaped"], ids=["slash", "dot-dot"])
def test_a_run_name_never_fails_the_report_nor_leaves_reports_dir(blocks, tmp_path, run_name):
    """A name with `/` failed the CSV after the changes were applied (ledger: completed, run:
    Failed, no report); `../../../x` wrote outside reports_dir."""
    reports = tmp_path / "a" / "b" / "c" / "reports"
    novi, mailman = FakeNovi([novi_record("a", "a@example.org")]), FakeMailman({LIST: {}})
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        novi.install(mock)
        mailman.install(mock)
        state = sync_lists.with_options(flow_run_name=run_name)(
            list_id=LIST, novi_block="test-novi", mailman_block="test-mailman", reports_dir=str(reports),
            return_state=True)
    assert state.is_completed(), state.message
    written = list(tmp_path.rglob("*.csv"))
    assert [p.parent for p in written] == [reports.resolve()]
    assert state.result()["plan_csv"] == str(written[0])


def test_a_report_that_cannot_be_written_does_not_fail_an_applied_run(blocks, tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the reports folder should be")
    novi, mailman = FakeNovi([novi_record("a", "a@example.org")]), FakeMailman({LIST: {}})
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        novi.install(mock)
        mailman.install(mock)
        state = sync_lists(list_id=LIST, novi_block="test-novi", mailman_block="test-mailman",
                           reports_dir=str(blocked), return_state=True)
    assert state.is_completed() and "the plan CSV could not be written" in state.result()["message"]
    assert "a@example.org" in mailman.names(LIST) and last_run(Ledger())["state"] == "completed"
    assert "could not be written" in Artifact.get(SUMMARY_KEY).data


# refusals, approvals and labels (issue 14) --------------------------------------------------

def half_lapsed(tmp_path):
    """A list of 30 synced once, then half of it lapses: the removal-share guard trips."""
    records = [novi_record(f"m{i}", f"m{i}@example.org") for i in range(30)]
    novi, mailman = FakeNovi(records), FakeMailman({LIST: {}})
    assert run(novi, mailman, tmp_path)[0].is_completed()
    for record in records[:15]:
        record["MemberStatus"] = "expired"
    return records, novi, mailman


def tags_of(state) -> list[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id).tags


def test_a_refusal_reads_as_a_refusal_with_its_figures_and_the_command_that_applies_it(blocks, tmp_path, caplog):
    _, novi, mailman = half_lapsed(tmp_path)
    caplog.clear()
    state, calls = run(novi, mailman, tmp_path)
    assert state.is_failed() and state.message.startswith("Refused: ") and writes(calls) == []
    fingerprint = state.result(raise_on_failure=False).summary["plan_fingerprint"]
    assert len(fingerprint) == 12
    assert state.message.startswith(f"Refused: {LIST}: 15 removals planned, 50% of its 30 managed members")
    assert (f"To apply exactly this plan (plan {fingerprint}): `novi-mailman sync --list {LIST} --novi-block "
            f"test-novi --mailman-block test-mailman --approve {fingerprint}`") in state.message
    assert "Traceback" not in caplog.text and "Encountered exception" not in caplog.text
    assert "refused" in tags_of(state)


def test_an_approved_plan_is_applied_only_while_it_is_the_same_plan(blocks, tmp_path):
    records, novi, mailman = half_lapsed(tmp_path)
    refused, _ = run(novi, mailman, tmp_path)
    fingerprint = refused.result(raise_on_failure=False).summary["plan_fingerprint"]

    records[15]["MemberStatus"] = "expired"  # the data moves before the operator approves
    moved, calls = run(novi, mailman, tmp_path, approve=fingerprint)
    assert moved.is_failed() and moved.message.startswith("Refused: ") and writes(calls) == []
    now = moved.result(raise_on_failure=False).summary["plan_fingerprint"]
    assert now != fingerprint
    assert f"The plan changed since plan {fingerprint} was approved (the data moved); this is plan {now}" in moved.message
    assert "16 removals planned" in moved.message

    approved, calls = run(novi, mailman, tmp_path, approve=now.upper())  # as typed: case does not matter
    assert approved.is_completed() and approved.name == "Completed", approved.message
    assert approved.message == f"−16 on {LIST} (16 changes applied); plan {now} applied as approved by the operator"
    assert approved.result()["approved_plan"] == now
    assert f"Plan {now} was applied as approved" in Artifact.get(SUMMARY_KEY).data
    assert len(mailman.names(LIST)) == 14 and "approved" in tags_of(approved)
    assert approved.result()["guards"] and approved.result()["plan_fingerprint"] == now


def test_runs_label_themselves(blocks, tmp_path):
    records, roster = population()
    dry, _ = run(FakeNovi(records), FakeMailman({LIST: roster}), tmp_path, dry_run=True)
    assert "dry-run" in tags_of(dry)
    _, novi, mailman = half_lapsed(tmp_path)
    lifted, _ = run(novi, mailman, tmp_path, override_guards=True)
    assert lifted.is_completed() and "guards-overridden" in tags_of(lifted) and "dry-run" not in tags_of(lifted)


def test_an_approval_that_is_no_fingerprint_is_refused_before_anything_is_read(blocks, tmp_path):
    novi, mailman = FakeNovi([novi_record("a", "a@example.org")]), FakeMailman({LIST: {}})
    state, calls = run(novi, mailman, tmp_path, approve="yes please")
    assert state.is_failed() and "12 hex digits" in state.message and calls == []
    both, calls = run(novi, mailman, tmp_path, approve="0123456789ab", override_guards=True)
    assert both.is_failed() and "not both" in both.message and calls == []


class Operator:
    """Answers a paused run as the UI's Resume form does, from another thread."""

    def __init__(self, answers: list[bool | None], meanwhile=lambda: None) -> None:
        import threading

        self.answers, self.descriptions, self.meanwhile = answers, [], meanwhile  # meanwhile: before the 1st answer
        self.done = threading.Event()

    def __call__(self) -> None:
        import time

        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
        from prefect.client.schemas.objects import StateType
        from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
        from prefect.flow_runs import resume_flow_run
        from prefect.input.run_input import keyset_from_paused_state

        seen: set[str] = set()
        with get_client(sync_client=True) as client:
            while self.answers and not self.done.is_set():
                paused = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
                fresh = [r for r in paused if f"{r.id}/{r.state.state_details.pause_key}" not in seen]
                if not fresh:
                    time.sleep(0.5)
                    continue
                flow_run = fresh[0]
                seen.add(f"{flow_run.id}/{flow_run.state.state_details.pause_key}")
                keys = keyset_from_paused_state(flow_run.state)
                for _ in range(50):  # the run saves its form just after it pauses
                    try:
                        self.descriptions.append(client.read_flow_run_input(flow_run_id=flow_run.id,
                                                                            key=keys["description"]))
                        break
                    except (ObjectNotFound, PrefectHTTPStatusError):
                        time.sleep(0.2)
                if len(self.descriptions) == 1:
                    self.meanwhile()
                answer = self.answers.pop(0)
                if answer is not None:  # None: nobody answers
                    resume_flow_run(flow_run.id, run_input={"approve": answer})


def paused_run(monkeypatch, novi, mailman, tmp_path, operator: Operator, **params):
    import threading

    import tasks.approval as approval

    monkeypatch.setattr(approval, "can_wait", lambda: True)  # as in a deployment run
    monkeypatch.setattr(approval, "POLL_S", 1)
    answering = threading.Thread(target=operator, daemon=True)
    answering.start()
    try:
        state, calls = run(novi, mailman, tmp_path, **params)
    finally:
        operator.done.set()
        answering.join(timeout=60)
    return state, calls


def test_a_deployment_run_waits_for_approval_and_applies_the_plan_reviewed(blocks, tmp_path, monkeypatch):
    _, novi, mailman = half_lapsed(tmp_path)
    operator = Operator([True])
    state, calls = paused_run(monkeypatch, novi, mailman, tmp_path, operator)
    assert state.is_completed(), state.message
    assert len(mailman.names(LIST)) == 15
    assert state.message.startswith(f"−15 on {LIST} (15 changes applied); plan ")
    (description,) = operator.descriptions
    fingerprint = state.result()["plan_fingerprint"]
    assert f"Approve plan `{fingerprint}`?" in description and "15 removals planned, 50% of its 30" in description
    # the ledger holds both: the refusal, then the approved plan applied, under one flow run
    attempts = Ledger().history("m0@example.org")
    assert list(attempts["outcome"])[:2] == ["applied", "refused by a guard"]
    assert "approved" in tags_of(state) and "refused" not in tags_of(state)  # what it ended as


def test_approval_after_the_data_moved_refuses_again_with_the_new_figures(blocks, tmp_path, monkeypatch):
    records, novi, mailman = half_lapsed(tmp_path)

    def one_more_lapses():  # the data moves while the run waits: the approval's fresh plan differs
        records[15]["MemberStatus"] = "expired"
    operator = Operator([True, False], meanwhile=one_more_lapses)
    state, calls = paused_run(monkeypatch, novi, mailman, tmp_path, operator)
    assert state.is_failed() and writes(calls) == [] and len(mailman.names(LIST)) == 30
    first, second = operator.descriptions
    assert "15 removals planned" in first and "16 removals planned" in second
    assert "The plan changed since plan" in second and state.message.startswith("Rejected by the operator. Refused:")
    assert "16 removals planned" in state.message


def test_a_rejected_or_unanswered_approval_ends_refused(blocks, tmp_path, monkeypatch):
    _, novi, mailman = half_lapsed(tmp_path)
    rejected, calls = paused_run(monkeypatch, novi, mailman, tmp_path, Operator([False]))
    assert rejected.is_failed() and rejected.message.startswith("Rejected by the operator. Refused:")
    assert writes(calls) == []
    unanswered, calls = paused_run(monkeypatch, novi, mailman, tmp_path, Operator([None]), approval_wait_s=3)
    assert unanswered.is_failed() and unanswered.message.startswith("No approval within 3 s. Refused:")
    assert writes(calls) == [] and len(mailman.names(LIST)) == 30


def test_address_history_answers_why_someone_was_removed_in_the_ui(blocks, tmp_path):
    from flows.history import address_history
    from tasks.history import HISTORY_KEY

    records, roster = population()
    novi, mailman = FakeNovi(records), FakeMailman({LIST: roster})
    assert run(novi, mailman, tmp_path)[0].is_completed()
    state = address_history(address="EXP0@example.org", return_state=True)
    assert state.is_completed() and state.message == "1 change recorded for EXP0@example.org on 1 list"
    markdown = Artifact.get(HISTORY_KEY).data
    assert "| unsubscribe | applied | status expired |" in markdown.replace(f"| {LIST} ", "")
    assert "`address-history/on-demand`" in Artifact.get(SUMMARY_KEY).data  # the summary says how to ask
    nobody = address_history(address="nobody@example.org", return_state=True)
    assert nobody.is_completed() and nobody.message == "Nothing recorded for nobody@example.org"
    bad = address_history(address="not an address", return_state=True)
    assert bad.is_failed() and bad.message == "address must be one email address"


def test_list_history_answers_what_changed_on_a_list_this_week(blocks, tmp_path):
    """Issue 29, item 8: it took opening every version of a list's plan table."""
    from flows.history import list_history
    from tasks.history import LIST_HISTORY_KEY

    records, roster = population()
    novi, mailman = FakeNovi(records), FakeMailman({LIST: roster})
    first, _ = run(novi, mailman, tmp_path)
    assert first.is_completed()
    applied = Ledger().list_history(LIST, pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=1),
                                    pd.Timestamp.now(tz="UTC") + pd.Timedelta(minutes=1))
    state = list_history(list_id=LIST.replace(".", "@", 1), return_state=True)
    assert state.is_completed() and state.message.startswith(f"{len(applied)} changes on {LIST} from ")
    assert f"by 1 run: {len(applied)} applied (" in state.message
    markdown = Artifact.get(LIST_HISTORY_KEY).data
    assert markdown.count("| applied |") == len(applied) > 0
    assert "| exp0@example.org | unsubscribe | applied | status expired |" in markdown.lower()
    nothing = list_history(list_id="other@example.org", days=1, return_state=True)
    assert nothing.is_completed() and nothing.message.startswith("Nothing recorded on other.example.org from ")
    bad = list_history(list_id="not a list/../x", return_state=True)
    assert bad.is_failed() and "not a Mailman list id" in bad.message


def test_a_history_run_is_named_after_what_it_was_asked(blocks, monkeypatch):
    """Issue 29, item 7: every address-history run had one name; a name typed in the form is kept."""
    from types import SimpleNamespace

    import flows.history
    from flows.history import address_history, asked_name

    asked = address_history(address="jane@example.org", return_state=True)
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(asked.state_details.flow_run_id).name == "address-history-jane@example.org"
    for given, named in [("why jane", "why jane"), ("jane-q3", "jane-q3"), ("wise-cheetah", "list-history-m.example.org-7")]:
        monkeypatch.setattr(flows.history, "flow_run", SimpleNamespace(
            get_name=lambda given=given: given, get_parameters=lambda: {"list_id": "m.example.org", "days": 7}))
        assert asked_name("list-history", "list_id", "days") == named


def test_a_block_that_is_not_saved_is_one_line_saying_where_and_how(blocks, tmp_path, caplog):
    state = sync_lists(list_id=LIST, novi_block="nowhere", mailman_block="test-mailman", return_state=True)
    assert state.is_failed()
    assert state.message.startswith("no NoviCredentials block named 'nowhere' on the Prefect server at http")
    assert "novi-mailman blocks" in state.message and "Traceback" not in caplog.text


def test_a_digest_goes_through_a_notification_block_and_one_not_sent_never_fails_the_run(blocks, tmp_path):
    """The change digest by any Prefect notification block (here a webhook): one message for the
    run; a block that cannot deliver is said in the run's message, and the run completes."""
    import threading

    import yaml
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from sandbox.mailman import free_port
    from tests.fakes import WebhookReceiver

    receiver = WebhookReceiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    as_json = {"subject": "{{subject}}", "body": "{{body}}"}
    CustomWebhookNotificationBlock(name="hook", url=f"http://127.0.0.1:{receiver.server_port}/hook",
                                   json_data=as_json).save("test-digest-hook", overwrite=True)
    CustomWebhookNotificationBlock(name="dead", url=f"http://127.0.0.1:{free_port()}/hook",
                                   json_data=as_json).save("test-digest-dead", overwrite=True)

    def sync_with(block: str, novi, mailman):
        rules = tmp_path / "rules.yaml"
        rules.write_text(yaml.safe_dump({"lists": [{"list_id": LIST, "digest": {"notify_block": block}}]}))
        with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
            novi.install(mock)
            mailman.install(mock)
            return sync_lists(rules_path=str(rules), novi_block="test-novi", mailman_block="test-mailman",
                              reports_dir=str(tmp_path), return_state=True)

    try:
        records, roster = population()
        novi, mailman = FakeNovi(records), FakeMailman({LIST: roster})
        state = sync_with("custom-webhook/test-digest-hook", novi, mailman)
        assert state.is_completed(), state.message
        (sent,) = receiver.bodies
        assert sent["subject"].startswith(f"[novi-mailman] +3 −3 renamed 1 on {LIST} (run ")
        assert "Joined (3):" in sent["body"] and "(Novi cur-2)" in sent["body"]
        assert NOVI_KEY not in json.dumps(sent) and MAILMAN_PASSWORD not in json.dumps(sent)

        records.append(novi_record("cur-9", "cur9@example.org"))
        late = sync_with("custom-webhook/test-digest-dead", FakeNovi(records), mailman)
        assert late.is_completed() and late.name == "Completed"
        assert f"(the change digest for {LIST} was not sent (" in late.message
        assert len(receiver.bodies) == 1
    finally:
        receiver.shutdown()


# reads at once ------------------------------------------------------------------------------

def test_a_roster_that_grows_while_its_pages_are_read_two_at_a_time_fails_the_run(blocks, tmp_path):
    """2,500 members, three pages of 1,000: someone subscribes once the first page is served;
    a later page, asked for beside another, announces 2,501. Nothing is planned or written."""
    roster = {f"m{i:04d}@example.org": f"M {i}" for i in range(2_500)}
    records = [novi_record(f"n-{i}", f"m{i:04d}@example.org") for i in range(2_500)]
    novi, mailman = FakeNovi(records), FakeMailman({LIST: roster})
    serve, pages = mailman._roster, []

    def growing(request):
        pages.append(request.url)
        answer = serve(request)
        if len(pages) == 1:
            mailman.rosters[LIST]["late@example.org"] = mailman.new_member(LIST, "late@example.org", "Late")
        return answer

    mailman._roster = growing
    state, calls = run(novi, mailman, tmp_path)
    assert state.is_failed() and "changed from 2500 to 2501" in state.message, state.message
    assert writes(calls) == [] and 2 <= len(pages) <= 3


def test_reads_run_at_once_and_the_first_real_failure_is_raised_after_all_ended(prefect_server):
    """Three reads with two workers: `slow` stops on the halt, `late` is never begun, and the
    failure raised is `broken`'s, not the stop it caused."""
    import threading
    import time

    from prefect import flow, task

    from tasks.errors import ReadStopped, UnexpectedResponse
    from tasks.run import read_together

    began = []

    @task
    def read(name: str, halt: threading.Event):
        began.append(name)
        if name == "broken":
            time.sleep(0.2)  # the slow read is under way by then
            raise UnexpectedResponse("broken: the answer is not JSON")
        for _ in range(200):  # a long read's pages, each one a chance to stop
            if halt.is_set():
                raise ReadStopped("slow: stopped")
            time.sleep(0.05)
        return name

    @flow
    def reads():
        halt = threading.Event()
        got = read_together({name: (lambda name=name: read.submit(name, halt)) for name in ("slow", "broken", "late")},
                            2, halt)
        return got, halt

    with pytest.raises(UnexpectedResponse, match="broken"):
        reads()
    assert sorted(began) == ["broken", "slow"]


def test_reads_at_once_return_every_result_by_key(prefect_server):
    import threading

    from prefect import flow, task

    from tasks.run import read_together

    @task
    def read(name: str):
        return name.upper()

    @flow
    def reads():
        return read_together({n: (lambda n=n: read.submit(n)) for n in "abcde"}, 2, threading.Event())

    got, ended = reads()
    assert got == {n: n.upper() for n in "abcde"} and set(ended) == set("abcde")


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
