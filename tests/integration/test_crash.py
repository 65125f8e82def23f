"""A run that dies mid-apply, as production ends one (issue 28): the full sync deployed to a real
process worker, its flow-run process killed with SIGKILL (the OOM killer, a lost node, a killed
container) while it subscribes. Nothing it applied may be left unmanaged, whether or not anyone
presses Retry: the next run settles what it left intended against the roster.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL
from prefect.states import State

from sandbox import deploy as deployments
from tasks.core.planner import REASON_ADDRESS_CHANGED
from tasks.core.schema import Action, Outcome, RunState
from tasks.ledger import Ledger
from tests.integration.helpers import expected, lists_for, mail_to, sync, wait_for, worker_deployment
from tests.integration.test_interrupted import settled
from tests.conftest import last_run


BATCH = 20


@pytest.fixture
def deployed(world, tmp_path, ledger_url, monkeypatch):
    """The full sync deployed from prefect.yaml to a pool of this test's own, a process worker
    for it, and a list of 500 Novi records' members to fill; every process on this test's ledger."""
    monkeypatch.setenv("NOVI_MAILMAN_LEDGER", ledger_url)
    world["novi"].reset(size=500, seed=5, domain=world["domain"])
    (members,) = lists_for(world, "crashed")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"lists": [{"list_id": members}]}))
    with worker_deployment(world, tmp_path, rules, ledger_url, "crash-pool", batch_size=BATCH) as deployment:
        yield {"list": members, "deployment": deployment, "rules": rules, "worker_log": tmp_path / "worker.log"}


def _killed_mid_apply(world, deployed) -> tuple[object, dict[str, str]]:
    """Start the deployment, count its subscribes on the core, SIGKILL the flow-run process
    after 40; the crashed flow run and the roster it left."""
    started = run_deployment(deployed["deployment"], timeout=0)
    assert wait_for(lambda: len(world["admin"].roster(deployed["list"])) >= 2 * BATCH, seconds=180), \
        "the run never began applying"
    with get_client(sync_client=True) as client:
        pid = client.read_flow_run(started.id).infrastructure_pid
    assert pid, "the worker gave the run no process id"
    logged = len(deployed["worker_log"].read_text())
    os.kill(int(pid.rsplit(":", 1)[-1]), signal.SIGKILL)  # no clean-up of any kind
    crashed = deployments.wait_for_run(started.id, lambda state: state.is_final(), 120)
    assert crashed.state.type == StateType.CRASHED, crashed.state
    # The run's own process watcher reports the crash at once, the worker looks a few seconds
    # later and reports it again if the run is not final by then: a Retry in between is crashed
    # by that late report (Prefect 3.9). The test, like an operator, lets the worker have its word.
    assert wait_for(lambda: "prefect.flow_runs.worker - " in deployed["worker_log"].read_text()[logged:], 60)
    return crashed, settled(lambda: world["admin"].roster(deployed["list"]))


def test_a_killed_run_leaves_nothing_unmanaged_when_nobody_retries_it(world, deployed, tmp_path):
    members = deployed["list"]
    target = expected(world["novi"].records())
    crashed, partial = _killed_mid_apply(world, deployed)
    assert 2 * BATCH <= len(partial) < len(target), "the run was not killed mid-apply"

    # Life goes on: two members the dead run subscribed change address in Novi before the next run.
    by_address = {r["Email"].strip().lower(): r for r in world["novi"].records() if r["Email"]}
    movers = sorted(address for address in partial if address in by_address and " " not in address)[:2]
    for n, old in enumerate(movers):
        world["novi"].edit(by_address[old]["UniqueID"], Email=f"moved{n}-{world['tag']}@{world['domain']}")
    state, _ = sync(tmp_path, [{"list_id": members}])
    assert state.is_completed(), state.message

    roster = world["admin"].roster(members)
    assert roster == expected(world["novi"].records())  # the old addresses went; nothing else is on it
    summary = state.result()
    removed = [c for c in summary["lists"][0]["reasons"].get(Action.UNSUBSCRIBE, {}).items()]
    assert removed == [(REASON_ADDRESS_CHANGED, 2)]
    assert mail_to(world["core"], world["domain"]) == []
    ledger = Ledger()
    (dead,) = ledger.find_runs(crashed.name)
    assert [last_run(ledger, RunState.CRASHED)["run_id"]] == dead["keys"]
    applied = ledger.applied_changes(dead["keys"])
    assert set(applied["match_key"]) == set(partial) and set(applied["action"]) == {Action.SUBSCRIBE}
    for old in movers:  # history names the crashed run, then the move
        history = ledger.history(old)
        assert list(history["action"]) == [Action.UNSUBSCRIBE, Action.SUBSCRIBE]
        assert history["run_name"].iloc[1] == crashed.name and history["reason"].iloc[0] == REASON_ADDRESS_CHANGED


@pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)  # the ledger kinds: the test above
def test_a_killed_run_retried_from_the_ui_records_each_change_once(world, deployed):
    members = deployed["list"]
    target = expected(world["novi"].records())
    crashed, partial = _killed_mid_apply(world, deployed)
    with get_client(sync_client=True) as client:  # what the UI's Retry sends
        client.set_flow_run_state(crashed.id, State(type=StateType.SCHEDULED, name="AwaitingRetry",
                                                    message="Retry from the UI"), force=True)
        deadline = time.monotonic() + 240
        while (run := client.read_flow_run(crashed.id)).run_count < 2 or not run.state.is_final():
            assert time.monotonic() < deadline, f"the retried run never ended: {run.state}"
            time.sleep(1)
    assert run.state.is_completed(), run.state
    assert world["admin"].roster(members) == target
    ledger = Ledger()
    (run,) = ledger.find_runs(str(crashed.id))
    assert len(run["keys"]) == 2  # the crashed attempt, settled by the retry, and the retry
    applied = ledger.applied_changes(run["keys"])
    assert len(applied) == len(target) and not applied["match_key"].duplicated().any()  # each change once
    assert len(ledger.read([members])) == len(target)


def test_a_run_killed_between_mailmans_answer_and_the_ledger_is_settled_by_the_next(world, tmp_path, isolated_ledger):
    """The kill lands after Mailman took a batch and before the ledger heard of it."""
    world["novi"].reset(size=120, seed=7, domain=world["domain"])
    (members,) = lists_for(world, "unmarked")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"lists": [{"list_id": members}]}))
    target = expected(world["novi"].records())
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "NOVI_MAILMAN_REPORTS": str(tmp_path)}
    dies = ("import os, signal\nimport tasks.ledger as ledger\n"
            "ledger.Ledger.settled_batch = lambda *args: os.kill(os.getpid(), signal.SIGKILL)\n"
            "from flows.cli import app\n"
            f"app(['sync', '--rules', {str(rules)!r}, '--novi-block', 'it-novi', '--mailman-block', 'it-mailman', "
            f"'--batch-size', '{BATCH}', '--workers', '1'])")
    killed = subprocess.run([sys.executable, "-c", dies], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    partial = world["admin"].roster(members)
    assert len(partial) == BATCH  # the first batch reached Mailman, the ledger never heard its answer

    state, writes = sync(tmp_path, [{"list_id": members}])
    assert state.is_completed(), state.message
    assert world["admin"].roster(members) == target
    assert state.result()["outcomes"] == {Outcome.APPLIED: len(target) - BATCH}  # nothing twice
    ledger = Ledger()
    (dead,) = [r for r in ledger.find_runs(last_run(ledger, RunState.CRASHED)["run_id"])]
    assert set(ledger.applied_changes(dead["keys"])["match_key"]) == set(partial)
    assert len(ledger.read([members])) == len(target)
