"""Approval in the Prefect UI, as an operator uses it: prefect.yaml deployed to a real Prefect
server, a real process worker running it, a guard that trips, the run paused with the refused
figures in its Resume form, and the answer given through Prefect's API as the UI sends it.
"""

from __future__ import annotations

import json

from prefect.artifacts import Artifact
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.flow_runs import resume_flow_run
from prefect.input.run_input import keyset_from_paused_state

from tasks.ledger import Ledger
from tasks.report import PLAN_KEY, artifact_key
from tests.integration.approval_harness import final_state, paused_for_approval
from tests.integration.helpers import expected



def test_a_refused_deployment_run_waits_and_applies_the_plan_the_operator_approved(world, deployed):
    records = world["novi"].records()
    before = world["admin"].roster(deployed["list"])
    for record in records[::2]:  # half the list lapses: the removal guard trips
        world["novi"].edit(record["UniqueID"], MemberStatus="expired")
    started = run_deployment(deployed["deployment"], timeout=0)

    paused, description = paused_for_approval(started.id)
    assert paused.state.name == "Paused" and "refused" in paused.tags
    assert description.startswith("## Approve plan `") and "removals planned" in description
    fingerprint = description.split("`")[1]
    assert world["admin"].roster(deployed["list"]) == before  # nothing written while it waits

    resume_flow_run(started.id, run_input={"approve": True})  # the Resume form, approve ticked
    done = final_state(started.id)
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
    paused_for_approval(started.id)
    resume_flow_run(started.id, run_input={"approve": False})
    done = final_state(started.id)
    assert done.state.name == "Failed" and done.state.message.startswith("Rejected by the operator. Refused:")
    assert world["admin"].roster(deployed["list"]) == before
