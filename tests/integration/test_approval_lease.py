"""Approval past Prefect's lease renewal: a refused deployment run waits longer than the flow
engine's first renewal of its concurrency lease and keeps the deployment's slot. A file of its
own (it waits ~5 minutes), so that `make test` starts it at once beside the others."""

from __future__ import annotations

import time

from prefect.deployments import run_deployment
from prefect.flow_runs import resume_flow_run

from sandbox import deploy as deployments
from tests.integration.helpers import expected
from tests.integration.approval_harness import final_state, paused_for_approval

# Prefect 3.9.1's flow engine renews a deployment run's concurrency lease every 225 s (0.75 of a
# fixed 300 s, no setting shortens it); the first renewal after a pause is what crashed refused
# runs. Waiting past it is the only honest test.
PAST_THE_FIRST_RENEWAL_S = 250


def test_a_refused_run_waits_past_the_engines_lease_renewal_and_keeps_the_deployments_slot(world, deployed):
    for record in world["novi"].records()[::2]:  # half the list lapses: the removal guard trips
        world["novi"].edit(record["UniqueID"], MemberStatus="expired")
    before = world["admin"].roster(deployed["list"])
    started = run_deployment(deployed["deployment"], timeout=0)
    paused, description = paused_for_approval(started.id)
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
    done = final_state(started.id)
    assert done.state.is_completed(), done.state.message
    assert world["admin"].roster(deployed["list"]) == expected(world["novi"].records())
    assert f"plan {description.split('`')[1]}" in done.state.message  # exactly the plan reviewed
    # the slot came back when the first ended: the second runs, with nothing left to do
    after = deployments.wait_for_run(second.id, lambda state: state.is_final(), 240)
    assert after.state.is_completed() and after.state.message.startswith("No changes"), after.state.message
