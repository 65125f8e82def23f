"""The UI's Retry, as an operator uses it: a served deployment, a failed or refused run, then
the same flow run set to AwaitingRetry (what the Retry button does) and run again by the runner.

A retry keeps the flow-run id. The ledger must record the retry as one more attempt, keep what
it applied (so `history` answers and the next run plans from the truth), and never fail on it.
"""

from __future__ import annotations

import os
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
from sqlalchemy import select

from tasks.blocks import NoviCredentials
from tasks.ledger import Ledger, runs_table
from tests.integration.conftest import SANDBOX_KEY
from tests.integration.helpers import expected, lists_for, sync, wait_for




@pytest.fixture
def served(world, tmp_path, isolated_ledger):
    """The full sync served as a deployment, in a process of its own, on this test's ledger."""
    NoviCredentials(site_url=world["novi"].url, api_key=SANDBOX_KEY, requests_per_second=20,
                    read_retries=0).save("it-novi-once", overwrite=True)
    (members,) = lists_for(world, "retried")
    name = f"retry-{world['tag']}"  # a deployment of this test's own: another's may still be on the server
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"lists": [{"list_id": members}]}))
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_RUNNER_POLL_FREQUENCY": "1",
           "NOVI_MAILMAN_LEDGER": str(isolated_ledger), "NOVI_MAILMAN_REPORTS": str(tmp_path / "reports")}
    serve = subprocess.Popen(
        [sys.executable, "-c", f"from flows.sync import sync_lists; sync_lists.serve(name={name!r}, "
         f"parameters={{'rules_path': {str(rules)!r}, 'novi_block': 'it-novi-once', 'mailman_block': 'it-mailman', "
         "'approval_wait_s': 0})"],  # a refusal ends at once here: the Retry of a refusal is what is tested
        env=env, stdin=subprocess.DEVNULL, stdout=open(tmp_path / "serve.log", "wb"), stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        assert wait_for(lambda: _deployed(f"sync-lists/{name}"), 60), "the deployment was not served"
        first, _ = sync(tmp_path, [{"list_id": members}])
        assert first.is_completed(), first.message
        yield {"list": members, "logs": tmp_path / "serve.log", "deployment": f"sync-lists/{name}"}
    finally:
        os.killpg(serve.pid, 15)
        serve.wait(timeout=30)


def _deployed(name: str) -> bool:
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
            return True
        except Exception:  # not there yet: ObjectNotFound
            return False


def _retry(flow_run_id) -> State:
    """What the UI's Retry button sends, then wait for the runner to finish the run again."""
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, State(type=StateType.SCHEDULED, name="AwaitingRetry",
                                                     message="Retry from the UI"), force=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state.is_final() and run.state.name != "AwaitingRetry" and run.run_count >= 2:
                return run.state
            time.sleep(1)
    raise AssertionError("the retried run never ended")


def _attempts(flow_run_id) -> list[dict]:
    with Ledger().engine.connect() as conn:
        rows = conn.execute(select(runs_table).where(runs_table.c.flow_run_id == str(flow_run_id))
                            .order_by(runs_table.c.attempt)).mappings().all()
    return [dict(r) for r in rows]


def test_a_failed_run_retried_from_the_ui_is_recorded_and_remembered(world, served, tmp_path):
    on_list = world["admin"].roster(served["list"])
    churn = world["novi"].churn(lapse=4, add=3, seed=7)
    email_of = {r["UniqueID"]: (r["Email"] or "").lower() for r in world["novi"].records()}
    world["novi"].call("POST", "/_sandbox/faults", json={"fail_offsets": [0]})
    failed = run_deployment(served["deployment"], timeout=180)
    assert failed.state.is_failed(), failed.state
    assert [a["state"] for a in _attempts(failed.id)] == ["failed"], failed.state.message

    world["novi"].call("DELETE", "/_sandbox/faults")
    retried = _retry(failed.id)
    logs = served["logs"].read_text()[-3000:]
    assert retried.is_completed(), f"{retried.message}\n{logs}"
    attempts = _attempts(failed.id)
    assert [(a["state"], a["attempt"]) for a in attempts] == [("failed", 1), ("completed", 2)]
    assert attempts[1]["changes"] > 0 and "ledger" not in (retried.message or "")

    target = expected(world["novi"].records())
    assert world["admin"].roster(served["list"]) == target
    lapsed = [(c["id"], email_of[c["id"]]) for c in churn["lapse"]
              if email_of[c["id"]] in on_list and email_of[c["id"]] not in target]
    assert lapsed, churn["lapse"]
    renewed_id, address = lapsed[0]
    history = Ledger().history(address)
    assert history.iloc[0]["action"] == "unsubscribe" and history.iloc[0]["attempt"] == 2
    memory = Ledger().memberships(address)
    assert memory.empty or (memory["status"] != "member").all()  # no longer remembered as a member

    # The next run plans from the truth: nothing to do; and one who renews comes back.
    again, writes = sync(tmp_path, [{"list_id": served["list"]}], novi_block="it-novi-once")
    assert again.is_completed() and writes == []
    world["novi"].edit(renewed_id, MemberStatus="current")
    back, _ = sync(tmp_path, [{"list_id": served["list"]}], novi_block="it-novi-once")
    assert back.is_completed() and address in world["admin"].roster(served["list"])


def test_a_refused_run_retried_from_the_ui_is_refused_again_and_both_are_recorded(world, served):
    for record in world["novi"].records()[::2]:  # half the list lapses: the removal guard trips
        world["novi"].edit(record["UniqueID"], MemberStatus="expired")
    before = world["admin"].roster(served["list"])
    remembered = Ledger().read([served["list"]])
    refused = run_deployment(served["deployment"], timeout=180)
    assert refused.state.is_failed() and refused.state.name == "Failed"
    assert refused.state.message.startswith(f"Refused: {served['list']}:")
    retried = _retry(refused.id)
    assert retried.name == "Failed" and retried.message.startswith("Refused:"), retried.message
    assert "ledger" not in retried.message  # a refusal, not a contradiction
    assert [(a["state"], a["attempt"]) for a in _attempts(refused.id)] == [("refused", 1), ("refused", 2)]
    assert world["admin"].roster(served["list"]) == before
    # Neither attempt changed what the ledger remembers; history holds both refusals.
    def ordered(frame):
        return frame.sort_values("match_key", ignore_index=True)
    assert ordered(Ledger().read([served["list"]])).equals(ordered(remembered))
    lapsed = next(r["Email"] for r in world["novi"].records()[::2] if (r["Email"] or "").lower() in before)
    refusals = Ledger().history(lapsed)
    assert list(refusals.loc[refusals["outcome"] == "refused by a guard", "attempt"])[:2] == [2, 1]
