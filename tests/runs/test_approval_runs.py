"""Refusals, approvals and labels through whole sync runs (issue 14): the plan reviewed is the plan applied."""

from __future__ import annotations

from prefect.artifacts import Artifact

from tasks.ledger import Ledger
from tasks.report import SUMMARY_KEY
from tests.conftest import novi_record
from tests.fakes import FakeMailman, FakeNovi
from tests.runs.sync_harness import LIST, population, run, writes


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
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
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

