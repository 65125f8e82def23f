"""One sweep over a paged collection, whole or not at all.

Novi pages by offset, Mailman by page number: two small strategies (`Offsets`, `Numbers`) of
one loop with one set of stop rules. The sweep stops once the announced total arrived; a
total that changes, an empty page before the end, or more pages than the total needs (a
loop) raises `IncompleteSweep`: nothing may be planned from half a collection.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
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


def sweep(fetch: Callable[[dict], Page], paging: Offsets | Numbers, what: str) -> Iterator[tuple[int, list]]:
    """Every page's entries with the announced total, as `fetch(paging.request())` answers them."""
    received, announced, pages = 0, None, 0
    while announced is None or received < announced:
        page = fetch(paging.request())
        pages += 1
        if announced is None:
            announced = page.total
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
