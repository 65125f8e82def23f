"""A refused run's wait for approval (tasks.approval), without a server: a busy server does not
end the wait, and the wait says how long is left (issue 29, items 1 and 3)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from uuid import uuid4

import httpx

import tasks.approval as approval


class Server:
    """Answers the run's polls from a script: an exception is raised, a state type is returned."""

    def __init__(self, answers: list) -> None:
        self.answers = answers

    def read_flow_run(self, run_id):
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return SimpleNamespace(state=SimpleNamespace(is_running=lambda: answer == "running"))


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, text: str) -> None:
        self.lines.append(("info", text))

    def warning(self, text: str) -> None:
        self.lines.append(("warning", text))


def test_a_server_too_busy_to_answer_does_not_end_the_wait(monkeypatch):
    monkeypatch.setattr(approval.time, "sleep", lambda s: None)
    busy = httpx.ReadTimeout("database is locked")
    server, log = Server([busy, busy, "paused", busy, "running"]), Log()
    until = datetime.now(timezone.utc) + timedelta(hours=8)
    assert approval._resumed(server, uuid4(), until, "3f9a0c1d2e4b", log) is True
    warnings = [text for level, text in log.lines if level == "warning"]
    assert warnings == ["The Prefect server did not answer (ReadTimeout); still waiting."] * 2  # once per outage
    assert ("info", "Resumed by the operator.") in log.lines


def test_the_wait_ends_at_its_deadline_and_says_how_long_is_left_on_the_way(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(approval.time, "monotonic", lambda: clock[0])

    def sleep(seconds):  # an hour of polls goes by per poll
        clock[0] += 3600

    monkeypatch.setattr(approval.time, "sleep", sleep)
    log = Log()
    until = datetime.now(timezone.utc) + timedelta(seconds=2)
    assert approval._resumed(Server(["paused"]), uuid4(), until, "3f9a0c1d2e4b", log) is False

    log = Log()
    polls = iter(range(4))
    real_now = datetime.now(timezone.utc)
    monkeypatch.setattr(approval, "datetime", SimpleNamespace(now=lambda tz: real_now + timedelta(
        hours=next(polls, 9))))
    assert approval._resumed(Server(["paused"]), uuid4(), real_now + timedelta(hours=3, minutes=30), "abc", log) is False
    assert [text for _, text in log.lines] == ["Still waiting for approval of plan abc: 2.5 h left.",
                                               "Still waiting for approval of plan abc: 1.5 h left.",
                                               "Still waiting for approval of plan abc: 30 min left."]
