"""Facts about this machine's processes, for locks and the dev tooling that starts servers."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def process_alive(pid: int) -> bool:
    """Whether a process with this PID runs on this machine (owned by anyone).

    A zombie (exited, not yet reaped by its parent) has stopped running: counting it alive made
    every stop of a server this very process had started wait out its whole timeout."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, but belongs to another user
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return not Path("/proc/self/stat").exists()  # on Linux: it ended in between; elsewhere: no /proc to ask
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def wait_gone(pid: int, seconds: float) -> None:
    """Wait up to `seconds` for a process to exit, then kill it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process_alive(pid):
        time.sleep(0.2)
    if process_alive(pid):
        os.kill(pid, signal.SIGKILL)
