"""Facts about this machine's processes, for locks and the dev tooling that starts servers."""

from __future__ import annotations

import os
import signal
import time


def process_alive(pid: int) -> bool:
    """Whether a process with this PID runs on this machine (owned by anyone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, but belongs to another user
        return True
    return True


def wait_gone(pid: int, seconds: float) -> None:
    """Wait up to `seconds` for a process to exit, then kill it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process_alive(pid):
        time.sleep(0.2)
    if process_alive(pid):
        os.kill(pid, signal.SIGKILL)
