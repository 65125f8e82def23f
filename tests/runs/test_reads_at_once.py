"""Reads in flight at once: every result by key, the first real failure raised after all ended."""

from __future__ import annotations

import pytest

from tests.conftest import novi_record
from tests.fakes import FakeMailman, FakeNovi
from tests.runs.sync_harness import LIST, run, writes


def test_a_roster_that_grows_while_its_pages_are_read_two_at_a_time_fails_the_run(blocks, tmp_path):
    """2,500 members, three pages of 1,000: someone subscribes once the first page is served;
    a later page, asked for beside another, announces 2,501. Nothing is planned or written."""
    roster = {f"m{i:04d}@example.org": f"M {i}" for i in range(2_500)}
    records = [novi_record(f"n-{i}", f"m{i:04d}@example.org") for i in range(2_500)]
    novi, mailman = FakeNovi(records), FakeMailman({LIST: roster})
    serve, pages = mailman._roster, []

    def growing(request):
        pages.append(request.url)
        answer = serve(request)
        if len(pages) == 1:
            mailman.rosters[LIST]["late@example.org"] = mailman.new_member(LIST, "late@example.org", "Late")
        return answer

    mailman._roster = growing
    state, calls = run(novi, mailman, tmp_path)
    assert state.is_failed() and "changed from 2500 to 2501" in state.message, state.message
    assert writes(calls) == [] and 2 <= len(pages) <= 3


def test_reads_run_at_once_and_the_first_real_failure_is_raised_after_all_ended(prefect_server):
    """Three reads with two workers: `slow` stops on the halt, `late` is never begun, and the
    failure raised is `broken`'s, not the stop it caused."""
    import threading
    import time

    from prefect import flow, task

    from tasks.errors import ReadStopped, UnexpectedResponse
    from tasks.run import read_together

    began = []

    @task
    def read(name: str, halt: threading.Event):
        began.append(name)
        if name == "broken":
            time.sleep(0.2)  # the slow read is under way by then
            raise UnexpectedResponse("broken: the answer is not JSON")
        for _ in range(200):  # a long read's pages, each one a chance to stop
            if halt.is_set():
                raise ReadStopped("slow: stopped")
            time.sleep(0.05)
        return name

    @flow
    def reads():
        halt = threading.Event()
        got = read_together({name: (lambda name=name: read.submit(name, halt)) for name in ("slow", "broken", "late")},
                            2, halt)
        return got, halt

    with pytest.raises(UnexpectedResponse, match="broken"):
        reads()
    assert sorted(began) == ["broken", "slow"]


def test_reads_at_once_return_every_result_by_key(prefect_server):
    import threading

    from prefect import flow, task

    from tasks.run import read_together

    @task
    def read(name: str):
        return name.upper()

    @flow
    def reads():
        return read_together({n: (lambda n=n: read.submit(n)) for n in "abcde"}, 2, threading.Event())

    got, ended = reads()
    assert got == {n: n.upper() for n in "abcde"} and set(ended) == set("abcde")

