"""Servers started detached for the demo and the benchmark: PID files, logs, readiness, stop by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tasks.host import process_alive, wait_gone

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def prefect_environment(state: Path, port: int) -> dict[str, str]:
    """A Prefect of its own: its home in `state`, its server on 127.0.0.1:`port`, no telemetry."""
    return {"PREFECT_HOME": str(state / "prefect"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def start_prefect(port: int, state: Path, env: dict[str, str], timeout: float = 180) -> None:
    """`prefect server start` on 127.0.0.1:`port`, recorded as "prefect" in `state`."""
    start("prefect", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
          f"http://127.0.0.1:{port}/api/health", state, env, timeout=timeout)


def answers(url: str, **kwargs) -> bool:
    try:
        return requests.get(url, timeout=2, **kwargs).status_code == 200
    except requests.RequestException:
        return False


def start(name: str, command: list[str], ready_url: str, state: Path, env: dict[str, str],
          timeout: float = 90, **kwargs) -> None:
    """Start a server in its own session, record its PID in `state`, wait until it answers.

    A server of that name that is already running and answering is reused."""
    pid_file = state / f"{name}.pid"
    if pid_file.exists() and process_alive(int(pid_file.read_text())) and answers(ready_url, **kwargs):
        print(f"{name}: already running (pid {pid_file.read_text()})")
        return
    log_path = state / f"{name}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                   start_new_session=True, cwd=ROOT)
    pid_file.write_text(str(process.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answers(ready_url, **kwargs):
            shown = log_path.relative_to(ROOT) if log_path.is_relative_to(ROOT) else log_path
            print(f"{name}: started (pid {process.pid}), log {shown}")
            return
        if process.poll() is not None:
            pid_file.unlink()
            raise SystemExit(f"{name} exited at start; see {log_path}")
        time.sleep(0.3)
    stop(name, state)  # never leave behind a server that did not come up
    raise SystemExit(f"{name} did not answer within {timeout:.0f} s; see {log_path}")


def stop(name: str, state: Path) -> None:
    """Stop the server `start` recorded, with everything in its session (e.g. Prefect's workers)."""
    pid_file = state / f"{name}.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        if process_alive(pid):
            os.killpg(pid, signal.SIGTERM)
            wait_gone(pid, 20)
        pid_file.unlink()
        print(f"{name}: stopped")
