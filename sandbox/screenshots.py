"""`make screenshots`: the screens the README explains, seen in a real browser.

Runs the demo (fresh data), `make deploy`, then lives the operator's loop on the demo's Prefect
UI with Debian's headless Chromium (installed with apt when missing): a completed run's summary
and its plan table, a refused deployment run waiting with its Resume form open, the same run
ended Refused after a rejection, and the address-history answer. PNGs go to docs/screenshots/.

`python -m sandbox.screenshots --measure-tables` measures instead how long the UI takes to show a
table artifact of 100 to 5,000 rows (what `table_rows` is set from).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import requests
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from prefect.deployments import run_deployment
from prefect.flow_runs import resume_flow_run
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from sandbox import demo
from sandbox import deploy as deployments
from sandbox.browser import Browser
from sandbox.novi import DEFAULT_KEY
from tasks import local_server

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "docs" / "screenshots"
DEBUG_PORT = 9339
NOVI = {"Authorization": f"Basic {DEFAULT_KEY}"}


def artifact_id(flow_run_id, key: str):
    with get_client(sync_client=True) as client:
        (found,) = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=[key])))
    return found.id


def lapse(share: int) -> None:
    """Every `share`-th current member lapses in the sandbox: enough for the removal guard."""
    records = requests.get(f"{demo.NOVI_URL}/api/members", params={"pageSize": 1000, "offset": 0}, headers=NOVI,
                           timeout=10).json()["Results"]
    for record in [r for r in records if r["MemberStatus"] == "current"][::share]:
        requests.patch(f"{demo.NOVI_URL}/_sandbox/members/{record['UniqueID']}", json={"MemberStatus": "expired"},
                       headers=NOVI, timeout=10).raise_for_status()


def prefect_settings(ui: str) -> dict:
    """This process's Prefect client, pointed at the demo's server with its login."""
    return {PREFECT_API_URL: f"{ui}/api", PREFECT_API_AUTH_STRING: local_server.auth_string()}


def screenshots() -> None:
    demo.demo()
    demo.deploy()
    ui = demo.prefect_ui(start=False)
    SHOTS.mkdir(parents=True, exist_ok=True)
    demo.say("Screens of the operator's loop, in headless Chromium")
    with temporary_settings(prefect_settings(ui)), Browser(DEBUG_PORT) as browser:
        browser.sign_in(ui, local_server.auth_string())
        requests.post(f"{demo.NOVI_URL}/_sandbox/churn", json={"lapse": 4, "renew": 2, "rename": 3,
                                                               "change_address": 2, "add": 3}, headers=NOVI,
                      timeout=10).raise_for_status()
        done = run_deployment("sync-lists/nightly-full-sync", timeout=300)
        assert done.state.is_completed(), done.state
        browser.open(f"{ui}/runs/flow-run/{done.id}", "changes applied")
        shot(browser, "1-completed-run.png")
        browser.open(f"{ui}/artifacts/artifact/{artifact_id(done.id, 'novi-mailman-summary')}", "in step")
        shot(browser, "2-summary.png")
        browser.open(f"{ui}/artifacts/artifact/{artifact_id(done.id, 'novi-mailman-plan-members-example-org')}",
                     "address change")
        shot(browser, "3-plan-table.png")

        lapse(3)  # a third of the members lapse at once: the removal guards trip
        waiting = run_deployment("sync-lists/nightly-full-sync", timeout=0)
        deployments.wait_for_run(waiting.id, lambda s: s.is_paused())
        browser.open(f"{ui}/runs/flow-run/{waiting.id}", "Resume")
        shot(browser, "4-refused-waiting.png")
        browser.click("Resume")
        browser.wait_for("Approve plan")
        shot(browser, "5-approval-form.png")
        resume_flow_run(waiting.id, run_input={"approve": False})
        deployments.wait_for_run(waiting.id, lambda s: s.is_final())
        browser.open(f"{ui}/runs/flow-run/{waiting.id}", "Rejected by the operator")
        shot(browser, "6-refused-run.png")

        with get_client(sync_client=True) as client:  # someone the completed run removed
            plan = client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[done.id]),
                key=ArtifactFilterKey(any_=["novi-mailman-plan-members-example-org"])))[0]
        address = next(row["email"] for row in json.loads(plan.data) if row["action"] == "unsubscribe")
        asked = run_deployment("address-history/on-demand", parameters={"address": address}, timeout=300)
        browser.open(f"{ui}/artifacts/artifact/{artifact_id(asked.id, 'novi-mailman-address-history')}",
                     "History of")
        shot(browser, "7-address-history.png")
    print(f"Screenshots in {SHOTS.relative_to(ROOT)}/")


def shot(browser: Browser, name: str) -> None:
    browser.shot(SHOTS / name)
    print(f"  {name}")


def measure_tables(sizes=(100, 500, 1000, 2000, 5000)) -> None:
    """Seconds from opening a table artifact of each size until its rows are on the page."""
    from prefect.artifacts import create_table_artifact

    ui = demo.prefect_ui()
    with temporary_settings(prefect_settings(ui)), Browser(DEBUG_PORT) as browser:
        browser.sign_in(ui, local_server.auth_string())
        for size in sizes:
            rows = [{"action": "left alone", "email": f"member{i}@example.org", "change": "", "name": f"Member {i}",
                     "novi_id": f"5a1d0000-0000-4000-8000-{i:012d}", "reason": "unmanaged: not in Novi",
                     "outcome": "", "detail": ""} for i in range(size)]
            key = f"novi-mailman-table-measure-{size}"
            create_table_artifact(rows, key=key, description=f"{size} rows")
            with get_client(sync_client=True) as client:
                (found,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                                 limit=1)
            started = time.monotonic()
            browser.open(f"{ui}/artifacts/artifact/{found.id}", f"member{size - 1}@example.org", seconds=300)
            print(f"{size:>6} rows: shown after {time.monotonic() - started:.1f} s, {browser.rows():,} table rows "
                  "in the page")


if __name__ == "__main__":
    measure_tables() if "--measure-tables" in sys.argv else screenshots()
