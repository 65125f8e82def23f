"""What a run's logs say in the Prefect UI: an expected failure is our one line, once, at ERROR.

Prefect logs a failed run three more times, each with a traceback at ERROR: the task engine
("Task run failed with exception … Retries are exhausted", and the task's final state), and the
flow engine ("Engine execution exited with unexpected exception"), which re-raises the Failed
state's error that every deployment run of ours returns on purpose (a refusal, a peer's 500, a
refused key). For our own errors (tasks.errors.SyncError) those say nothing the run's one line
does not, so the filter here drops the tracebacks and the engine's line, and keeps the task's
final state as an INFO line (which task ended so). Anything else, a bug included, keeps
Prefect's full record.
"""

from __future__ import annotations

import logging

from tasks.errors import SyncError

RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


def _expected_names() -> set[str]:
    found, queue = set(), [SyncError]
    while queue:
        cls = queue.pop()
        found.add(cls.__name__)
        queue += cls.__subclasses__()
    return found


class ExpectedFailures(logging.Filter):
    """Prefect's repeats of an expected failure: dropped, or one INFO line without a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        error = record.exc_info[1] if record.exc_info else None
        if error is not None:
            if not isinstance(error, SyncError):
                return True  # not ours to judge: a bug keeps its traceback
            return False  # "Engine execution exited…", "Task run failed with exception…": said already
        message = record.getMessage()
        if not any(f"exception {name}:" in message for name in _expected_names()):
            return True
        # "Finished in state Failed('Task run encountered an exception NoviError: …')"
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def quiet_expected_failures() -> None:
    """Install the filter on the run loggers (once); a flow's module calls it as it is loaded,
    before the engine logs anything."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, ExpectedFailures) for f in logger.filters):
            logger.addFilter(ExpectedFailures())
