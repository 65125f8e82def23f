"""Alerts as code against a real Prefect server (`prefect server start`, its automation services
on, as an association runs it): `alerts install` creates the automations once, and a failed
run, a refused run, a recovered run and a missed schedule each reach a notification block
pointed at a webhook receiver this test runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from tests.fakes import WebhookReceiver


COMMAND = str(Path(sys.executable).parent / "novi-mailman")
SECRET = "webhook-token-QWERTY-123"  # the receiver's token: must never appear in a message


@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    """A persistent Prefect server as the command line starts it, its services running."""
    from tasks import local_server

    home = tmp_path_factory.mktemp("alerts-home")
    saved = os.environ.get(local_server.HOME_ENV)
    os.environ[local_server.HOME_ENV] = str(home)
    try:
        url = local_server.start(lambda line: None)
        # Its login, read now: each test function gets a NOVI_MAILMAN_HOME of its own (conftest)
        yield url, home, local_server.client_settings(url)
    finally:
        local_server.stop()
        if saved is None:
            os.environ.pop(local_server.HOME_ENV, None)
        else:
            os.environ[local_server.HOME_ENV] = saved


def test_alerts_reach_a_webhook_for_failed_refused_recovered_and_missed_runs(real_server):
    from prefect import get_client
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import IntervalSchedule
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings
    from prefect.states import Completed, Failed

    url, home, login = real_server
    receiver = WebhookReceiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
           **login, "NOVI_MAILMAN_HOME": str(home)}
    try:
        with temporary_settings({PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: login["PREFECT_API_AUTH_STRING"]}):
            CustomWebhookNotificationBlock(
                name="ops", url=f"http://127.0.0.1:{receiver.server_port}/hook?token={SECRET}",
                json_data={"subject": "{{subject}}", "body": "{{body}}"}).save("ops", overwrite=True)
            with get_client(sync_client=True) as client:
                sync_flow = client.create_flow_from_name("sync-lists")
                member_flow = client.create_flow_from_name("sync-member")
                # Every 10 s: the shortest window a proactive trigger takes, so a missed run shows at once.
                nightly = client.create_deployment(sync_flow, "nightly-full-sync", schedules=[DeploymentScheduleCreate(
                    schedule=IntervalSchedule(interval=timedelta(seconds=10)), max_scheduled_runs=1)])
                member = client.create_deployment(member_flow, "webhook-member-sync")

            def install() -> subprocess.CompletedProcess:
                return subprocess.run([COMMAND, "alerts", "install", "--notify", "custom-webhook/ops",
                                       "--grace-hours", "0"], env=env, capture_output=True, text=True, timeout=120)

            first, second = install(), install()
            assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
            assert first.stdout.count("created: ") == 4 and "updated" not in first.stdout
            assert second.stdout.count("updated: ") == 4 and "created" not in second.stdout  # idempotent
            listed = subprocess.run([COMMAND, "alerts", "list"], env=env, capture_output=True, text=True, timeout=60)
            assert listed.stdout.count("novi-mailman: ") == 4

            # No run completes: the proactive alert says so within its window (10 s here).
            missed = receiver.wait_for("no completed sync of sync-lists/nightly-full-sync")
            assert "may be out of step" in missed["body"] and "in 10 s" in missed["subject"]

            with get_client(sync_client=True) as client:
                def run_of(deployment_id, state):
                    flow_run = client.create_flow_run_from_deployment(deployment_id)
                    client.set_flow_run_state(flow_run.id, state, force=True)
                    return flow_run

                failed = run_of(nightly, Failed(message="Novi refused the API key (401): save it again with "
                                                        "`novi-mailman blocks`"))
                body = receiver.wait_for(f"{failed.name} (nightly-full-sync) ended Failed")
                assert "Novi refused the API key (401)" in body["body"] and f"/runs/flow-run/{failed.id}" in body["body"]

                from prefect.states import Crashed

                crashed = run_of(nightly, Crashed(message="Flow run infrastructure exited with non-zero status code -9."))
                body = receiver.wait_for(f"{crashed.name} (nightly-full-sync) ended Crashed")
                assert "a Retry, or the next run of its lists, records what was applied" in body["body"]
                assert "records what was applied" not in json.dumps(
                    [b for b in receiver.bodies if failed.name in json.dumps(b)])  # said for a crash only

                refused = run_of(member, Failed(message="Refused: members.example.org: 600 removals planned, more "
                                                        "than max_removals = 500."))
                body = receiver.wait_for(f"{refused.name} (webhook-member-sync) is refused")
                assert "600 removals planned" in body["body"] and "approve" in body["body"]

                # An operator's dry run after the failure synced nothing: no recovery
                dry = run_of(nightly, Completed(message="Dry run, nothing written; planned: +3 −2 on "
                                                        "members.example.org"))
                recovered = run_of(nightly, Completed(message="+3 −2 on members.example.org (5 changes applied)"))
                body = receiver.wait_for(f"{recovered.name} (nightly-full-sync) recovered")
                assert "+3 −2 on members.example.org" in body["body"]
                assert not [b for b in receiver.bodies if dry.name in json.dumps(b)]
                # a refusal is told as one, not as a failure (both are Failed states)
                assert not [b for b in receiver.bodies if f"{refused.name} (webhook-member-sync) ended" in json.dumps(b)]
            for body in receiver.bodies:
                assert SECRET not in json.dumps(body)

            removed = subprocess.run([COMMAND, "alerts", "remove"], env=env, capture_output=True, text=True, timeout=60)
            assert removed.stdout.count("removed: ") == 4
            with get_client(sync_client=True) as client:
                assert [a for a in client.read_automations() if "novi-mailman" in a.tags] == []
    finally:
        receiver.shutdown()
