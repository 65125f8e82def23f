"""Approval in the Prefect UI, as an operator uses it: prefect.yaml deployed to a real Prefect
server, a real process worker running it, a guard that trips, the run paused with the refused
figures in its Resume form, and the answer given through Prefect's API as the UI sends it.
"""

from __future__ import annotations

import json
import time

import pytest
from prefect.artifacts import Artifact
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.deployments import run_deployment
from prefect.flow_runs import resume_flow_run
from prefect.input.run_input import keyset_from_paused_state

from sandbox import deploy as deployments
from tasks.ledger import Ledger
from tasks.report import PLAN_KEY, artifact_key
from tests.integration.helpers import expected, lists_for, sync, worker_deployment



@pytest.fixture
def deployed(world, tmp_path, isolated_ledger):
    """prefect.yaml's deployments under names and a pool of this test's own, and a worker for them."""
    (members,) = lists_for(world, "approved")
    rules = tmp_path / "rules.yaml"
    first, _ = sync(tmp_path, [{"list_id": members}])  # writes rules.yaml, and the list starts in step
    assert first.is_completed(), first.message
    with worker_deployment(world, tmp_path, rules, str(isolated_ledger), "it-pool") as deployment:
        yield {"list": members, "deployment": deployment}


def _paused(flow_run_id):
    """The run once it waits for approval, and the description its Resume form shows."""
    run = deployments.wait_for_run(flow_run_id, lambda state: state.is_paused() or state.is_final(), 240)
    assert run.state.is_paused(), run.state
    keys = keyset_from_paused_state(run.state)
    with get_client(sync_client=True) as client:
        for _ in range(50):  # the run saves its form just after it pauses
            try:
                return run, json.loads(client.read_flow_run_input(flow_run_id=flow_run_id, key=keys["description"]))
            except (ObjectNotFound, PrefectHTTPStatusError):  # not saved yet
                time.sleep(0.2)
    raise AssertionError("the paused run has no Resume form")


def _final(flow_run_id):
    return deployments.wait_for_run(flow_run_id, lambda state: state.is_final(), 240)


def test_a_refused_deployment_run_waits_and_applies_the_plan_the_operator_approved(world, deployed):
    records = world["novi"].records()
    before = world["admin"].roster(deployed["list"])
    for record in records[::2]:  # half the list lapses: the removal guard trips
        world["novi"].edit(record["UniqueID"], MemberStatus="expired")
    started = run_deployment(deployed["deployment"], timeout=0)

    paused, description = _paused(started.id)
    assert paused.state.name == "Paused" and "refused" in paused.tags
    assert description.startswith("## Approve plan `") and "removals planned" in description
    fingerprint = description.split("`")[1]
    assert world["admin"].roster(deployed["list"]) == before  # nothing written while it waits

    resume_flow_run(started.id, run_input={"approve": True})  # the Resume form, approve ticked
    done = _final(started.id)
    assert done.state.is_completed(), done.state.message
    assert done.state.message.startswith("−") and f"on {deployed['list']}" in done.state.message
    assert "approved" in done.tags and "refused" not in done.tags  # what it ended as (issue 29, item 7)
    assert world["admin"].roster(deployed["list"]) == expected(world["novi"].records())

    # the ledger holds the refusal and the approved plan applied, two attempts of one run
    attempts = Ledger().history(next(r["Email"].lower() for r in records[::2] if r["Email"].lower() in before))
    assert list(attempts["outcome"])[:2] == ["applied", "refused by a guard"]
    # the list's plan table is the approved run's: removals first, applied
    rows = json.loads(Artifact.get(artifact_key(PLAN_KEY, False, deployed["list"])).data)
    assert rows[0]["action"] == "unsubscribe" and rows[0]["outcome"] == "applied"
    with get_client(sync_client=True) as client:
        assert fingerprint in client.read_flow_run_input(flow_run_id=started.id, key=keyset_from_paused_state(
            paused.state)["description"])


def test_a_rejected_deployment_run_ends_refused_and_writes_nothing(world, deployed):
    for record in world["novi"].records()[::2]:
        world["novi"].edit(record["UniqueID"], MemberStatus="expired")
    before = world["admin"].roster(deployed["list"])
    started = run_deployment(deployed["deployment"], timeout=0)
    _paused(started.id)
    resume_flow_run(started.id, run_input={"approve": False})
    done = _final(started.id)
    assert done.state.name == "Failed" and done.state.message.startswith("Rejected by the operator. Refused:")
    assert world["admin"].roster(deployed["list"]) == before


# Prefect 3.9.1's flow engine renews a deployment run's concurrency lease every 225 s (0.75 of a
# fixed 300 s, no setting shortens it); the first renewal after a pause is what crashed refused
# runs. Waiting past it is the only honest test.
PAST_THE_FIRST_RENEWAL_S = 250


def test_a_refused_run_waits_past_the_engines_lease_renewal_and_keeps_the_deployments_slot(world, deployed):
    for record in world["novi"].records()[::2]:  # half the list lapses: the removal guard trips
        world["novi"].edit(record["UniqueID"], MemberStatus="expired")
    before = world["admin"].roster(deployed["list"])
    started = run_deployment(deployed["deployment"], timeout=0)
    paused, description = _paused(started.id)
    began = paused.start_time.timestamp()
    assert paused.state.message.startswith("Waiting for approval of plan ")  # a paused run says why
    # A second run of the deployment meanwhile waits for the slot (concurrency_limit: 1) and starts
    # nothing: the README's promise that two nightly runs never overlap, a paused one included.
    second = run_deployment(deployed["deployment"], timeout=0)

    while time.time() - began < PAST_THE_FIRST_RENEWAL_S:
        now = deployments.wait_for_run(started.id, lambda state: True)
        assert now.state.is_paused(), f"the waiting run left Paused: {now.state.type.value} {now.state.message}"
        waiting = deployments.wait_for_run(second.id, lambda state: True)
        assert waiting.state.is_scheduled() and waiting.start_time is None, waiting.state
        time.sleep(10)
    assert world["admin"].roster(deployed["list"]) == before  # nothing written while it waits

    resume_flow_run(started.id, run_input={"approve": True})
    done = _final(started.id)
    assert done.state.is_completed(), done.state.message
    assert world["admin"].roster(deployed["list"]) == expected(world["novi"].records())
    assert f"plan {description.split('`')[1]}" in done.state.message  # exactly the plan reviewed
    # the slot came back when the first ended: the second runs, with nothing left to do
    after = deployments.wait_for_run(second.id, lambda state: state.is_final(), 240)
    assert after.state.is_completed() and after.state.message.startswith("No changes"), after.state.message
