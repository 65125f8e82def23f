"""Deploy the project's `prefect.yaml` to a Prefect server and start a process worker for it:
what `make deploy` does for the demo, and what the deployment tests do on a server of their own.

The deployments are prefect.yaml's own; only their parameters (the rules file, the blocks) and,
for tests, their names and pool are changed, in a copy of the file written beside the run's
other state. The worker gives each flow run its own environment (the ledger and reports paths).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import yaml

from sandbox import servers

ROOT = Path(__file__).resolve().parent.parent
POOL = "novi-mailman"


def deployment_file(target: Path, parameters: dict, *, pool: str = POOL, suffix: str = "",
                    schedules: bool = True) -> Path:
    """A copy of prefect.yaml at `target` whose deployments take `parameters` (and, for tests, a
    name `suffix`, another pool, no schedules)."""
    project = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    for deployment in project["deployments"]:
        deployment["name"] += suffix
        own = deployment.get("parameters", {})  # each takes only the parameters its flow has
        deployment["parameters"] = {**own, **{k: v for k, v in parameters.items() if k in own}}
        deployment["work_pool"]["name"] = pool
        if not schedules:
            deployment.pop("schedules", None)
    target.write_text(yaml.safe_dump(project, sort_keys=False))
    return target


def deploy(prefect_file: Path, env: dict[str, str], *, pool: str = POOL) -> None:
    """Create the process work pool (again if it exists) and deploy every deployment of the file."""
    env = {**env, "NOVI_MAILMAN_DIR": str(ROOT)}  # prefect.yaml's pull step: flows run from this checkout
    bin_dir = servers.BIN
    for command in ([str(bin_dir / "prefect"), "work-pool", "create", pool, "--type", "process", "--overwrite"],
                    [str(bin_dir / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)]):
        done = subprocess.run(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command[1:4])} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def start_worker(state: Path, env: dict[str, str], port: int, *, pool: str = POOL, name: str = "worker") -> None:
    """A process worker for `pool`, recorded as `name` in `state`; its health check on 127.0.0.1:`port`."""
    env = {**env, "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1", "PREFECT_WORKER_WEBSERVER_PORT": str(port),
           "PREFECT_WORKER_QUERY_SECONDS": env.get("PREFECT_WORKER_QUERY_SECONDS", "5")}
    servers.start(name, [str(servers.BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process",
                         "--with-healthcheck"], f"http://127.0.0.1:{port}/health", state, env, timeout=120)


def wait_for_run(flow_run_id, done, seconds: float = 300):
    """The flow run once `done(its state)` holds; an error after `seconds`."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if done(run.state):
                return run
            time.sleep(1)
    raise TimeoutError(f"flow run {flow_run_id} did not reach the state awaited in {seconds:.0f} s")
