"""What a failed run says in its logs and its message (issue 29, items 3 and 5)."""

from __future__ import annotations

import logging
import sys

import pytest

from tasks.errors import (CredentialsRefused, GuardRefused, IncompleteSweep, PermanentHTTPError, RulesError,
                          TransientHTTPError, what_now)
from tasks.logs import ExpectedFailures

BLOCKS = {"Novi": "NoviCredentials block 'novi-prod'", "Mailman": "MailmanCredentials block 'lists'"}


def _record(level: int, message: str, error: BaseException | None = None, name="prefect.flow_runs"):
    exc_info = (type(error), error, None) if error else None
    return logging.LogRecord(name, level, __file__, 1, message, None, exc_info)


@pytest.mark.parametrize(("error", "says"), [
    (CredentialsRefused("Novi: GET /api/members answered 401: the API key or password was refused",
                        method="GET", path="/api/members", status=401),
     "Nothing was written. Put the right API key in the NoviCredentials block 'novi-prod' (Prefect UI → Blocks, "
     "or `novi-mailman blocks`), then Retry this run."),
    (CredentialsRefused("Mailman: GET /3.1/system/versions answered 401: the API key or password was refused",
                        method="GET", path="/3.1/system/versions", status=401),
     "Put the right username and password in the MailmanCredentials block 'lists'"),
    (TransientHTTPError("Novi: GET /api/members answered 500", method="GET", path="/api/members", status=500),
     "Nothing was written. Retry this run once Novi answers again; the next scheduled run tries again too."),
    (PermanentHTTPError("Mailman: GET /3.1/lists answered 404", method="GET", path="/3.1/lists", status=404),
     "Nothing was written. Check the URL in the MailmanCredentials block 'lists', then Retry this run."),
    (IncompleteSweep("Novi announced 10 entries but returned 9"), "nothing is planned from a partial read"),
])
def test_a_peers_failure_ends_with_what_to_do_naming_the_block(error, says):
    assert says in what_now(error, BLOCKS)


def test_errors_that_say_their_fix_themselves_get_nothing_added():
    assert what_now(RulesError("rules.yaml: no such file; copy rules.example.yaml"), BLOCKS) == ""
    assert what_now(GuardRefused("Refused: …"), BLOCKS) == ""


def test_prefects_repeats_of_an_expected_failure_are_dropped_or_an_info_line():
    keep = ExpectedFailures()
    error = TransientHTTPError("Novi: GET /api/members answered 500", method="GET", path="/", status=500)
    assert not keep.filter(_record(logging.ERROR, "Engine execution exited with unexpected exception", error))
    assert not keep.filter(_record(logging.ERROR, "Task run failed with exception: %r - Retries are exhausted", error,
                                   name="prefect.task_runs"))
    final = _record(logging.ERROR, "Finished in state Failed('Task run encountered an exception "
                                   "TransientHTTPError: Novi: GET /api/members answered 500')", name="prefect.task_runs")
    assert keep.filter(final) and final.levelno == logging.INFO and final.levelname == "INFO"
    ours = _record(logging.ERROR, "Novi: GET /api/members answered 500. Nothing was written. …")
    assert keep.filter(ours) and ours.levelno == logging.ERROR  # the run's one line stays an error


def test_a_bug_keeps_its_traceback_at_error():
    keep = ExpectedFailures()
    try:
        raise KeyError("list_id")
    except KeyError:
        bug = _record(logging.ERROR, "Engine execution exited with unexpected exception")
        bug.exc_info = sys.exc_info()
    assert keep.filter(bug) and bug.levelno == logging.ERROR and bug.exc_info is not None
    final = _record(logging.ERROR, "Finished in state Failed('Task run encountered an exception KeyError: …')")
    assert keep.filter(final) and final.levelno == logging.ERROR
