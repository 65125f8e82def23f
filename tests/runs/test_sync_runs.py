"""Whole sync runs under a Prefect test server, against stateful fakes of Novi and Mailman: what is applied, retried, refused and reported."""

from __future__ import annotations

import json
import math

import pytest
import responses
from prefect.artifacts import Artifact

from flows.sync import sync_lists
from tasks.errors import ChangesFailed, GuardRefused
from tasks.ledger import Ledger
from tasks.report import PLAN_KEY, SUMMARY_KEY, artifact_key
from tests.conftest import last_run, novi_record
from tests.fakes import MAILMAN_REST, FakeMailman, FakeNovi
from tests.runs.sync_harness import LIST, MAILMAN_PASSWORD, NOVI_KEY, population, run, writes


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
    # it removes (they may renew); Mailman's version and the list's settings (who it mails by itself)
    assert summary["http_calls"] == {"mailman_read": 2, "novi_page": math.ceil(8 / 3), "roster_page": 1,
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
    assert len(calls) == 1 + math.ceil(8 / 3) + 1 + 1 + 2 + 1 + 1  # + the list's settings


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



def test_the_plan_and_the_summary_say_how_many_notices_mailman_will_send_the_owners(blocks, tmp_path):
    """Issue 32: 153 notices reached a site's owners on its first sync, said nowhere."""
    from prefect.artifacts import Artifact

    records, roster = population()
    mailman = FakeMailman({LIST: roster})
    mailman.settings[LIST] = {"admin_notify_mchanges": True}
    planned, _ = run(FakeNovi(records), mailman, tmp_path, dry_run=True)
    (item,) = planned.result()["lists"]
    assert item["owner_notices"] == item["changes"]["subscribe"] == 3  # the lapsed go in one mass unsubscribe
    assert "would make Mailman send its own notices to list owners" in Artifact.get(
        artifact_key(SUMMARY_KEY, True)).data
    # Mailman's default policy, confirm, lets anyone join around Novi: said (issue 32, item 3)
    assert item["open_door"] == "confirm"
    assert "Anyone can join members.example.org without Novi" in Artifact.get(artifact_key(SUMMARY_KEY, True)).data
    mailman.settings[LIST] = {"admin_notify_mchanges": False, "subscription_policy": "moderate"}
    quiet, _ = run(FakeNovi(records), mailman, tmp_path, dry_run=True)
    assert quiet.result()["lists"][0]["owner_notices"] == 0 and quiet.result()["lists"][0]["open_door"] is None
