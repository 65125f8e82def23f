"""The retry gate for Prefect tasks: retry transient HTTP failures, nothing else."""

from __future__ import annotations

from tasks.errors import is_transient


def retry_if_transient(task, task_run, state) -> bool:
    """`retry_condition_fn`: True only when the attempt failed on a transient HTTP error."""
    try:
        state.result()
    except Exception as exc:  # the state's own exception, re-raised by result(): classify it
        return is_transient(exc)
    return False
