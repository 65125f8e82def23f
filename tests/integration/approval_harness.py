"""What the approval tests share: a run paused for approval (their `deployed` fixture is in conftest)."""

from __future__ import annotations

import json
import time

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.input.run_input import keyset_from_paused_state

from sandbox import deploy as deployments


def paused_for_approval(flow_run_id):
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


def final_state(flow_run_id):
    return deployments.wait_for_run(flow_run_id, lambda state: state.is_final(), 240)
