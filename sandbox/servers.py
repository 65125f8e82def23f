"""Servers started detached for the demo and the benchmark: PID files, logs, readiness, stop by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import requests

from sandbox.mailman import _wait_gone
from tasks.host import process_alive

ROOT = Path(__file__).resolve().parent.parent


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
            print(f"{name}: started (pid {process.pid}), log {log_path.relative_to(ROOT)}")
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
            _wait_gone(pid, 20)
        pid_file.unlink()
        print(f"{name}: stopped")
