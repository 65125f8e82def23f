"""Mailman's numbered pages (`count` + `page`), with stop rules, a loop guard and a count check."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

from tasks.errors import IncompleteSweep, UnexpectedResponse

Fetch = Callable[[int, int], object]  # (count, page) -> decoded JSON body


def numbered_pages(fetch: Fetch, page_size: int, what: str) -> Iterator[list[dict]]:
    """Every page of a Mailman collection, whole or not at all.

    Mailman leaves `entries` out of an empty page (not `[]`), so a missing key is an empty
    page. The sweep stops once `total_size` entries arrived; a total that changes, an empty
    page before the end, or more pages than the total needs raises `IncompleteSweep`.
    """
    page, received, announced = 1, 0, None
    while announced is None or received < announced:
        body = fetch(page_size, page)
        if not isinstance(body, dict) or not isinstance(body.get("total_size"), int):
            raise UnexpectedResponse(f"Mailman {what}: the answer has no total_size")
        entries = body.get("entries", [])
        if not isinstance(entries, list):
            raise UnexpectedResponse(f"Mailman {what}: entries is not a list")
        total = body["total_size"]
        if announced is None:
            announced = total
        elif total != announced:
            raise IncompleteSweep(
                f"Mailman {what} changed from {announced} to {total} entries while it was read; rerun")
        if not entries:
            if received < announced:
                raise IncompleteSweep(f"Mailman {what}: empty page {page} after {received} of {announced} entries")
            return
        if page > math.ceil(announced / page_size):
            raise IncompleteSweep(f"Mailman {what} kept returning pages past its total of {announced}")
        yield entries
        received += len(entries)
        page += 1
    if received != announced:
        raise IncompleteSweep(f"Mailman {what} announced {announced} entries but returned {received}")
