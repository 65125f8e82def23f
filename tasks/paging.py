"""One sweep over a paged collection, whole or not at all.

Novi pages by offset, Mailman by page number: two small strategies (`Offsets`, `Numbers`) of
one loop with one set of stop rules. The sweep stops once the announced total arrived; a
total that changes, an empty page before the end, or more pages than the total needs (a
loop) raises `IncompleteSweep`: nothing may be planned from half a collection.

Once the first page gave the total, numbered pages, and offsets where the server kept the page
size, are known in advance, so a sweep may ask for the next few while the current one is
checked (`in_flight`); the pages still pass the same rules one by one, in order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from tasks.errors import IncompleteSweep


@dataclass(frozen=True)
class Page:
    """One answer: the total the collection announced in it, and its entries."""

    total: int
    entries: list


class Offsets:
    """Novi's `pageSize` + `offset`. The offset advances by the records actually received (a
    server may cap the page). Records can repeat across pages, so the caller counts the
    distinct ones against the total (`exact` is False)."""

    exact = False

    def __init__(self, size: int) -> None:
        self.size, self.offset = size, 0

    def request(self) -> dict:
        return {"pageSize": self.size, "offset": self.offset}

    def advance(self, received: int) -> None:
        self.offset += received

    def most_pages(self, total: int) -> int:
        return total  # every page holds a record, so a whole sweep ends by then

    def position(self) -> str:
        return f"at offset {self.offset}"

    def ahead(self, total: int, received: int) -> list[dict]:
        """The requests after this one, if the first page was a whole page: the server keeps
        the page size, so the offsets to come are known. A page cut short later on ends the
        asking ahead (`_Ahead.get`), and the sweep goes on one page at a time."""
        if received < self.size:
            return []
        return [{"pageSize": self.size, "offset": offset}
                for offset in range(self.offset + self.size, total, self.size)]


class Numbers:
    """Mailman's `count` + `page` (always together; pages from 1). Every entry arrives once,
    so the count received must equal the total (`exact`)."""

    exact = True

    def __init__(self, size: int) -> None:
        self.size, self.page = size, 1

    def request(self) -> dict:
        return {"count": self.size, "page": self.page}

    def advance(self, received: int) -> None:
        self.page += 1

    def most_pages(self, total: int) -> int:
        return math.ceil(total / self.size)

    def position(self) -> str:
        return str(self.page)

    def ahead(self, total: int, received: int) -> list[dict]:
        """The requests for the pages after this one, up to the last the total needs."""
        return [{"count": self.size, "page": page} for page in range(self.page + 1, self.most_pages(total) + 1)]


def sweep(fetch: Callable[[dict], Page], paging: Offsets | Numbers, what: str,
          in_flight: int = 1) -> Iterator[tuple[int, list]]:
    """Every page's entries with the announced total, as `fetch(paging.request())` answers them;
    with up to `in_flight` requests out at once where the pages are known ahead (`Numbers`)."""
    with _Ahead(fetch, in_flight) as ahead:
        yield from _checked(ahead, paging, what)


class _Ahead:
    """Fetches requests known in advance on a few threads, each answer taken when its turn comes.
    On the way out (done, or a page that failed the rules) the requests not begun are cancelled
    and those running are waited for: no request outlives its sweep."""

    def __init__(self, fetch: Callable[[dict], Page], in_flight: int) -> None:
        self.fetch, self.in_flight = fetch, in_flight
        self.queue: list[dict] = []
        self.pending: dict[tuple, Future] = {}
        self.pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> _Ahead:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            for future in self.pending.values():
                future.cancel()
            self.pool.shutdown(wait=True)

    def plan(self, requests: list[dict]) -> None:
        if self.in_flight > 1 and requests:
            self.queue = requests
            self.pool = ThreadPoolExecutor(self.in_flight, thread_name_prefix="page")

    def get(self, request: dict) -> Page:
        key = _key(request)
        if key not in self.pending and not (self.queue and _key(self.queue[0]) == key):
            # Not the request foreseen (a page came back short): stop asking ahead.
            for stale in self.pending.values():
                stale.cancel()
            self.pending, self.queue = {}, []
        while self.pool is not None and self.queue and len(self.pending) < self.in_flight:
            upcoming = self.queue.pop(0)
            self.pending[_key(upcoming)] = self.pool.submit(self.fetch, upcoming)
        future = self.pending.pop(key, None)
        return future.result() if future is not None else self.fetch(request)


def _key(request: dict) -> tuple:
    return tuple(sorted(request.items()))


def _checked(ahead: _Ahead, paging: Offsets | Numbers, what: str) -> Iterator[tuple[int, list]]:
    received, announced, pages = 0, None, 0
    while announced is None or received < announced:
        page = ahead.get(paging.request())
        pages += 1
        if announced is None:
            announced = page.total
            ahead.plan(paging.ahead(announced, len(page.entries)))
        elif page.total != announced:
            raise IncompleteSweep(f"{what} changed from {announced} to {page.total} entries while it was read; "
                                  "entries were added or removed meanwhile, rerun to read a consistent one")
        if not page.entries:
            if received < announced:
                raise IncompleteSweep(f"{what}: empty page {paging.position()} after {received} of {announced} "
                                      "entries")
            return
        if pages > paging.most_pages(announced):
            raise IncompleteSweep(f"{what} kept returning pages past its total of {announced}")
        yield announced, page.entries
        received += len(page.entries)
        paging.advance(len(page.entries))
    if paging.exact and received != announced:
        raise IncompleteSweep(f"{what} announced {announced} entries but returned {received}")
