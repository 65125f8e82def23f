"""The one paginator (tasks.paging) on its own, as the Meltano SDK tests its paginators: a
scripted server answers each request, and each stop rule is driven to its end: the whole
collection, the end on the announced total, a total that moves, an empty page before the
end, a loop, a short count, and pages asked ahead."""

from __future__ import annotations

import threading

import pytest

from tasks.errors import IncompleteSweep
from tasks.paging import Numbers, Offsets, Page, sweep


class Numbered:
    """A server that pages `entries` by page number, answering with `total` (or the real size)."""

    def __init__(self, entries: list, total: int | None = None, size: int = 2) -> None:
        self.entries, self.total, self.size = entries, len(entries) if total is None else total, size
        self.asked: list[dict] = []
        self.lock = threading.Lock()

    def __call__(self, request: dict) -> Page:
        with self.lock:
            self.asked.append(request)
        assert request["count"] == self.size  # count and page always together
        start = (request["page"] - 1) * self.size
        return Page(self.total, self.entries[start:start + self.size])


def every(fetch, paging, in_flight: int = 1) -> list:
    return [e for _, entries in sweep(fetch, paging, "the collection", in_flight) for e in entries]


def test_numbered_pages_are_read_to_the_announced_total_and_no_further():
    server = Numbered(list("abcde"))
    assert every(server, Numbers(2)) == list("abcde")
    assert [r["page"] for r in server.asked] == [1, 2, 3]  # no fourth, empty page asked to learn the end


def test_an_empty_collection_costs_one_page():
    server = Numbered([])
    assert every(server, Numbers(2)) == [] and len(server.asked) == 1


def test_offsets_advance_by_what_arrived_when_the_server_caps_the_page():
    records = list(range(7))

    def capped(request: dict) -> Page:  # asked for 5, the server sends 3 at most
        return Page(len(records), records[request["offset"]:request["offset"] + min(request["pageSize"], 3)])

    assert every(capped, Offsets(5)) == records


def test_a_total_that_changes_mid_sweep_stops_it():
    server = Numbered(list("abcdef"))

    def moving(request: dict) -> Page:
        page = server(request)
        return Page(page.total + (request["page"] > 1), page.entries)

    with pytest.raises(IncompleteSweep, match="changed from 6 to 7"):
        every(moving, Numbers(2))


def test_an_empty_page_before_the_total_stops_it():
    with pytest.raises(IncompleteSweep, match="empty page 2 after 2 of 5"):
        every(Numbered(list("ab"), total=5), Numbers(2))


def test_a_server_that_repeats_one_short_page_for_ever_is_stopped_as_a_loop():
    def looping(request: dict) -> Page:  # ignores the page asked: the same single entry every time
        return Page(5, ["a"])

    with pytest.raises(IncompleteSweep, match="past its total of 5"):
        every(looping, Numbers(2))


def test_offsets_leave_repeated_records_to_the_caller_to_count():
    """Novi's records can repeat across offset pages: the sweep is not exact there, and the
    caller counts the distinct records against the total (tasks.novi.extract_members)."""
    def repeating(request: dict) -> Page:
        return Page(5, list("abc"))

    assert every(repeating, Offsets(3)) == list("abcabc")


def test_numbered_pages_that_hold_fewer_than_announced_are_refused():
    def short(request: dict) -> Page:  # every page one entry short of its count
        return Page(4, ["x"] if request["page"] <= 4 else [])

    with pytest.raises(IncompleteSweep):
        every(short, Numbers(2))


@pytest.mark.parametrize("in_flight", [2, 4])
def test_pages_asked_ahead_arrive_in_order_and_pass_the_same_rules(in_flight):
    server = Numbered(list(range(11)), size=2)
    assert every(server, Numbers(2), in_flight) == list(range(11))
    assert sorted(r["page"] for r in server.asked) == [1, 2, 3, 4, 5, 6]  # each page once, none past the total


def test_a_page_failing_the_rules_while_others_are_ahead_stops_the_sweep_and_its_requests():
    server = Numbered(list(range(20)), size=2)

    def moving(request: dict) -> Page:
        page = server(request)
        return Page(page.total + (request["page"] == 3), page.entries)

    with pytest.raises(IncompleteSweep, match="changed from 20 to 21"):
        every(moving, Numbers(2), in_flight=3)
    assert max(r["page"] for r in server.asked) <= 3 + 3  # no request outlives the sweep beyond those in flight
