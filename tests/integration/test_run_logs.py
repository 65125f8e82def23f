"""What an operator reads in a deployment run's logs in the Prefect UI (issue 29, item 3): for a
failed or refused run, our one line (the cause, what was and was not written, the fix, with the
block's or file's name) and no traceback at ERROR; while it waits on a peer, a word per retry.
Read back from the Prefect API, as the UI shows them."""

from __future__ import annotations

import logging
import time

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState,
                                           FlowRunFilterStateName, LogFilter, LogFilterFlowRunId)
from prefect.deployments import run_deployment

from tasks.blocks import MailmanCredentials, NoviCredentials
from tests.integration.conftest import SANDBOX_KEY
from tests.integration.helpers import lists_for, sync, wait_for, worker_deployment



@pytest.fixture
def deployed(world, tmp_path, isolated_ledger):
    """The nightly full sync of prefect.yaml, run by a real process worker."""
    (members,) = lists_for(world, "logged")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"lists": [{"list_id": members}]}))
    first, _ = sync(tmp_path, [{"list_id": members}])
    assert first.is_completed(), first.message
    with worker_deployment(world, tmp_path, rules, str(isolated_ledger), "logs-pool") as deployment:
        yield {"list": members, "deployment": deployment}


def _logs(flow_run_id) -> list:
    """The run's logs as the UI lists them, once the last has reached the API."""
    def read():
        with get_client(sync_client=True) as client:
            return client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    assert wait_for(lambda: any("Finished in state" in log.message for log in read()), 30)
    time.sleep(3)  # the engine's own last lines follow its final state
    return read()


def _errors(logs) -> list[str]:
    return [log.message for log in logs if log.level >= logging.ERROR]


def test_a_failed_or_refused_run_logs_its_one_line_and_no_traceback(world, deployed):
    NoviCredentials(site_url=world["novi"].url, api_key=SANDBOX_KEY, requests_per_second=20,
                    read_retries=2).save("it-novi-twice", overwrite=True)
    MailmanCredentials(rest_url=world["core"].rest_url, password="not-the-password").save("it-mailman-wrong",
                                                                                         overwrite=True)
    # Novi answers 500: each retry is said as it starts, then the one line with the fix
    world["novi"].call("POST", "/_sandbox/faults", json={"fail_offsets": [0]})
    try:
        novi_down = run_deployment(deployed["deployment"], timeout=180, parameters={"novi_block": "it-novi-twice"})
    finally:
        world["novi"].call("DELETE", "/_sandbox/faults")
    logs = _logs(novi_down.id)
    assert novi_down.state.message.endswith(
        "answered 500: An error has occurred. Nothing was written. Retry this run once Novi answers again; the "
        "next scheduled run tries again too."), novi_down.state.message
    assert _errors(logs) == [novi_down.state.message]  # once, and nothing else at ERROR
    assert len([log for log in logs if "trying again in" in log.message and log.level == logging.WARNING]) == 2

    # Mailman refuses the password: the line names the block to fix
    refused_key = run_deployment(deployed["deployment"], timeout=180, parameters={"mailman_block": "it-mailman-wrong"})
    assert "Put the right username and password in the MailmanCredentials block 'it-mailman-wrong'" in \
        refused_key.state.message
    assert _errors(_logs(refused_key.id)) == [refused_key.state.message]

    # a dry run (it was named Planned, and its Completed state was not listed either)
    dry = run_deployment(deployed["deployment"], timeout=180, parameters={"dry_run": True})
    assert dry.state.is_completed() and dry.state.message.startswith("Dry run, nothing written")

    # a guard refuses the plan: its figures and how to approve, and no traceback
    for record in world["novi"].records()[::2]:
        world["novi"].edit(record["UniqueID"], MemberStatus="expired")
    refused = run_deployment(deployed["deployment"], timeout=180, parameters={"approval_wait_s": 0})
    logs = _logs(refused.id)
    assert refused.state.name == "Failed" and refused.state.message.startswith("Refused: ") and _errors(logs) == []
    assert [log.message for log in logs if log.level == logging.WARNING] == [refused.state.message]
    assert "--approve" in refused.state.message
    assert not any("Traceback" in log.message for log in logs)

    # Every run shows on the deployment's page: its Runs tab lists the runs whose state *name* is
    # one of Prefect's own (the UI's default filter, read from the installed UI), and ours were
    # named otherwise (Planned, Skipped, Refused) and were not listed.
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(deployed["deployment"])
        every = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
        listed = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=_ui_state_names()))))
    assert len(every) == 4 and {run.id for run in listed} == {run.id for run in every}


def _ui_state_names() -> list[str]:
    """The state names the Prefect UI's runs lists filter on by default, from its own bundle."""
    import re
    from pathlib import Path

    import prefect

    for bundle in (Path(prefect.__file__).parent / "server" / "ui" / "assets").glob("*.js"):
        found = re.search(r"\[`Scheduled`,`Late`,[^\]]*\]", bundle.read_text(errors="ignore"))
        if found:
            return re.findall(r"`(\w+)`", found.group(0))
    raise AssertionError("the UI's default state filter was not found in its bundle")
