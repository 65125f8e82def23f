"""End to end: a Novi webhook → the relay → Prefect → a member run → the roster in a real Mailman."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import requests
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from prefect.settings import PREFECT_API_URL

from sandbox.mailman import free_port
from tests.integration.helpers import expected, lists_for, sync, wait_for


RELAY_TOKEN = "e2e-relay-token-0123456789abcdef"


@pytest.fixture
def pipeline(world, tmp_path):
    """A served member-sync deployment and a relay, both as their own processes, stopped after."""
    (members,) = lists_for(world, "webhooks")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"lists": [{"list_id": members}]}))
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_RUNNER_POLL_FREQUENCY": "1",
           "NOVI_MAILMAN_RELAY_TOKEN": RELAY_TOKEN, "NOVI_MAILMAN_REPORTS": str(tmp_path)}
    # Both hand-off targets are served: the relay refuses to start while either is missing.
    params = {"rules_path": str(rules), "novi_block": "it-novi", "mailman_block": "it-mailman"}
    serve = subprocess.Popen(
        [sys.executable, "-c", "from prefect import serve; from flows.member import sync_member; "
         "from flows.sync import sync_lists; "
         f"serve(sync_member.to_deployment(name='webhook-member-sync', parameters={params!r}), "
         f"sync_lists.to_deployment(name='nightly-full-sync', parameters={params!r}))"],
        env=env, stdin=subprocess.DEVNULL, stdout=open(tmp_path / "serve.log", "wb"), stderr=subprocess.STDOUT,
        start_new_session=True)
    port = free_port()
    relay = None
    try:
        assert wait_for(lambda: _deployed("webhook-member-sync") and _deployed("nightly-full-sync"), 60), \
            "the deployments were not served"
        relay = subprocess.Popen([sys.executable, "-m", "flows.cli", "relay", "--port", str(port), "--window", "2",
                                  "--max-batch", "100"], env=env, stdin=subprocess.DEVNULL,
                                 stdout=open(tmp_path / "relay.log", "wb"), stderr=subprocess.STDOUT,
                                 start_new_session=True)
        assert wait_for(lambda: _answers(f"http://127.0.0.1:{port}/health"), 30), "the relay did not start"
        world["novi"].reset(size=260, seed=world["seed"], domain=world["domain"])
        world["novi"].call("POST", "/_sandbox/reset", json={"webhook_url": f"http://127.0.0.1:{port}/novi/{RELAY_TOKEN}"})
        first, _ = sync(tmp_path, [{"list_id": members}])
        assert first.is_completed(), first.message
        yield {"list": members, "relay": f"http://127.0.0.1:{port}", "logs": tmp_path}
    finally:
        for process in (relay, serve):
            if process is not None:
                os.killpg(process.pid, 15)
                process.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _deployed(name: str) -> bool:
    with get_client(sync_client=True) as client:
        return bool(client.read_deployments(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name]))))


def _member_runs() -> int:
    with get_client(sync_client=True) as client:
        found = client.read_deployments(deployment_filter=DeploymentFilter(
            name=DeploymentFilterName(any_=["webhook-member-sync"])))
        return sum(len(client.read_flow_runs(deployment_filter=DeploymentFilter(id={"any_": [d.id]})))
                   for d in found)


def test_a_renewal_reaches_the_list_through_a_webhook(world, pipeline):
    expired = next(r for r in world["novi"].records() if r["MemberStatus"] == "expired" and r["Active"]
                   and r["Email"] and r["Email"] == r["AccountEmail"] and not r["UnsubscribeFromEmails"])
    world["novi"].edit(expired["UniqueID"], MemberStatus="current")
    started = time.monotonic()
    world["novi"].call("POST", "/_sandbox/webhook", json={"event": "customer.updated", "id": expired["UniqueID"]})
    on_list = wait_for(lambda: expired["Email"].lower() in world["admin"].roster(pipeline["list"]), 120)
    elapsed = time.monotonic() - started
    assert on_list, "the renewed member never reached the list"
    print(f"\nwebhook → on the list in {elapsed:.1f} s (2 s debounce window, 1 s runner polling)")
    assert world["admin"].roster(pipeline["list"]) == expected(world["novi"].records())


def test_a_burst_of_1000_webhooks_for_200_members_is_a_few_runs_and_everyone_ends_right(world, pipeline):
    records = world["novi"].records()
    runs_before = _member_runs()
    notified = [r["UniqueID"] for r in records[:200]]  # 200 members, most of them with a change
    for record in records[:200]:
        if record["Email"] and record["Email"] == record["AccountEmail"] and record["CustomerType"] == "Person":
            world["novi"].edit(record["UniqueID"], LastName=f"{record['LastName']}-Burst")
    session = requests.Session()
    for i in range(1000):  # five webhooks per member, interleaved
        member_id = notified[i % len(notified)]
        response = session.post(f"{pipeline['relay']}/novi/{RELAY_TOKEN}",
                                json={"event": "customer.updated", "entityUniqueId": member_id}, timeout=10)
        assert response.status_code == 202
    target = expected(world["novi"].records())
    ended_right = wait_for(lambda: world["admin"].roster(pipeline["list"]) == target, 480)
    if not ended_right:  # say why: what the relay and the runs printed
        logs = {name: (pipeline["logs"] / name).read_text()[-3000:] for name in ("relay.log", "serve.log")}
        pytest.fail(f"not every member ended right; logs: {logs}")
    runs = _member_runs() - runs_before
    print(f"\n1,000 webhooks for {len(notified)} members: {runs} member runs")
    assert 1 <= runs <= 4, f"{runs} member runs for one burst"
