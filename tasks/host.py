"""Facts about this machine's processes, for locks and the dev tooling that starts servers."""

from __future__ import annotations

import os


def process_alive(pid: int) -> bool:
    """Whether a process with this PID runs on this machine (owned by anyone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, but belongs to another user
        return True
    return True
