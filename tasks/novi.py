"""Novi AMS: the client, the member sweep and the members frame (see reference/novi-api.md)."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.core.members import _id, _text, distinct_members, members_frame
from tasks.core.schema import NOVI_PAGE_SIZE
from tasks.errors import IncompleteSweep, UnexpectedResponse
from tasks.http import ApiSession, json_body
from tasks.paging import Offsets, Page, sweep

# Novi reports 20 requests/s and 600/min per key; 600/min is the binding one (10/s sustained).
DEFAULT_REQUESTS_PER_SECOND = 8.0
# Member pages asked for at once (tasks.paging.sweep): the pace above still spaces their starts,
# so a page's own latency no longer adds to it (measured in `make bench`: README, Performance).
NOVI_PAGES_IN_FLIGHT = 2
# Reads retried on 429, 5xx, timeouts and refused connections, with backoff (tasks.http).
READ_RETRIES = 6


def api_base(site_url: str) -> str:
    """`https://www.x.org`, `https://www.x.org/`, `.../api` and `.../api/` all give `https://www.x.org/api`."""
    url = site_url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("the Novi site URL must start with https:// (or http:// for a local sandbox)")
    if url.lower().endswith("/api"):
        url = url[:-4]
    return f"{url}/api"


class NoviClient:
    """One Novi site, one key, one HTTP session."""

    def __init__(self, site_url: str, api_key: str, *, requests_per_second: float = DEFAULT_REQUESTS_PER_SECOND,
                 timeout: tuple[float, float] | None = None, read_retries: int = READ_RETRIES, sleep=None,
                 pages_in_flight: int = NOVI_PAGES_IN_FLIGHT) -> None:
        self.pages_in_flight = pages_in_flight
        extra = {"timeout": timeout} if timeout else {}
        if sleep is not None:
            extra["sleep"] = sleep
        # Novi takes the key as is after "Basic ", not base64(user:password).
        self.http = ApiSession(api_base(site_url), headers={"Authorization": f"Basic {api_key}"},
                               per_second=requests_per_second, read_retries=read_retries,
                               system="Novi", **extra)

    def __repr__(self) -> str:
        return f"NoviClient({self.http.base_url})"

    def _page(self, params: dict) -> Page:
        response = self.http.request("GET", "members", bucket="novi_page", params=params)
        body = json_body(response, "Novi /api/members")
        if not isinstance(body, dict) or not isinstance(body.get("Results"), list):
            raise UnexpectedResponse("Novi /api/members: the answer has no Results list")
        total = body.get("TotalCount")
        if not isinstance(total, int) or isinstance(total, bool) or total < 0:
            raise UnexpectedResponse("Novi /api/members: the answer has no valid TotalCount")
        if not all(isinstance(r, dict) for r in body["Results"]):
            raise UnexpectedResponse("Novi /api/members: Results holds something other than records")
        return Page(total, body["Results"])

    def member_pages(self, page_size: int = NOVI_PAGE_SIZE) -> Iterator[tuple[int, list[dict]]]:
        """Every page of `/api/members`, with the sweep's stop rules (tasks.paging)."""
        return sweep(self._page, Offsets(page_size), "Novi's member list", self.pages_in_flight)

    def member_sweep(self, page_size: int = NOVI_PAGE_SIZE) -> Iterator[list[dict]]:
        """Every page's records, each with a `UniqueID`; once the last page is in, the distinct
        ids are counted against `TotalCount` (records can repeat across pages) and a shortfall
        raises: a caller never finishes with part of the members."""
        ids: set[str] = set()
        received, announced = 0, 0
        for total, records in self.member_pages(page_size):
            announced = total
            for record in records:
                uid = record.get("UniqueID")
                if not isinstance(uid, str) or not uid.strip():
                    raise UnexpectedResponse("Novi /api/members: a record has no UniqueID")
                ids.add(uid.strip().lower())
            received += len(records)
            yield records
        if len(ids) != announced:
            raise IncompleteSweep(
                f"Novi announced {announced} members but the sweep found {len(ids)} distinct "
                f"ones in {received} records; records moved between pages, rerun to read a consistent list")

    def members(self, page_size: int = NOVI_PAGE_SIZE) -> list[dict]:
        """All member records, deduplicated by `UniqueID` (the last read wins) and counted."""
        by_id: dict[str, dict] = {}
        for records in self.member_sweep(page_size):
            by_id.update((record["UniqueID"].strip().lower(), record) for record in records)
        return list(by_id.values())

    def member_total(self) -> int:
        """`TotalCount` from a one-record page: a cheap connection check."""
        return self._page({"pageSize": 1, "offset": 0}).total

    def members_with_email(self, address: str) -> list[dict]:
        """Every record whose Email is this address (Novi's `email=` filter: exact, any case)."""
        page = self._page({"pageSize": 100, "offset": 0, "email": address})
        if page.total > len(page.entries):
            raise IncompleteSweep(f"Novi has {page.total} records with one address; more than one page can hold")
        return page.entries

    def people_of(self, company: dict) -> list[dict]:
        """The people whose parent is this company record.

        Novi's `parentName=` filter (its name, as `name=` is: a guess at its meaning, README
        "Routing"); only records whose ParentCustomerUniqueID is the company are kept, so a
        filter Novi ignored reads no stranger, and a company with more people than a page holds
        is left to the full sync."""
        company_id = str(company.get("UniqueID") or "").strip().lower()
        name = _text(company.get("Name")) if isinstance(company.get("Name"), str) else None
        if not name:
            return []
        page = self._page({"pageSize": 1000, "offset": 0, "parentName": name})
        if page.total > len(page.entries):
            raise IncompleteSweep(f"Novi has {page.total} records under the company {name!r}; more than one page "
                                  "holds: the full sync handles them")
        return [r for r in page.entries if _id(r.get("ParentCustomerUniqueID")) == company_id]

    def records_around(self, member_ids: list[str], companies: bool = False) -> tuple[dict[str, dict], list[str]]:
        """The members' records and every record sharing one of their addresses; and who was not found.

        Where a rule judges people by their company (`companies`), each person's parent company
        is read too, and for a company its people and named contacts, so the plan is the full
        sync's: a lapsed company's contacts come off in the run its webhook starts."""
        found: dict[str, dict] = {}
        missing: list[str] = []
        for member_id in member_ids:
            record = self.member(member_id)
            if record is None:  # Novi's "not found" is a 200 with no body: leave it to the full sync
                missing.append(member_id)
            else:
                found[str(record["UniqueID"]).lower()] = record
        if companies:
            for record in list(found.values()):
                if str(record.get("CustomerType") or "").casefold() != "person":
                    for person in self.people_of(record):
                        found.setdefault(str(person["UniqueID"]).lower(), person)
                    wanted = [record.get("PrimaryContactUniqueId"), record.get("BillingContactUniqueId")]
                else:
                    wanted = [record.get("ParentCustomerUniqueID")]
                found |= self.members_by_id({w.strip().lower() for w in wanted if isinstance(w, str)} - set(found))
        emails = {r.get("Email") for r in found.values() if isinstance(r.get("Email"), str) and r["Email"].strip()}
        for email in sorted(emails):
            for record in self.members_with_email(email.strip()):
                found.setdefault(str(record.get("UniqueID", "")).lower(), record)
        return found, missing

    def members_by_id(self, unique_ids) -> dict[str, dict]:
        """Records by lowercase UniqueID, one call each; ids Novi does not know are left out."""
        found = {}
        for unique_id in sorted({str(i).strip().lower() for i in unique_ids if isinstance(i, str) and i.strip()}):
            if (record := self.member(unique_id)) is not None:
                found[unique_id] = record
        return found

    def member(self, unique_id: str) -> dict | None:
        """One record, or None where Novi answers 200 with no identity (its "not found")."""
        response = self.http.request("GET", f"members/{unique_id}", bucket="novi_member", accept=(404,))
        if response.status_code == 404 or not response.content.strip():
            return None
        body = json_body(response, "Novi /api/members/{id}")
        if not isinstance(body, dict) or not body.get("UniqueID"):
            return None
        return body


@task(name="extract-members", cache_policy=NO_CACHE)  # its reads retry themselves (tasks.http)
def extract_members(client: NoviClient, page_size: int, address_fields: list[str]) -> pd.DataFrame:
    """Sweep every Novi member once and normalise them; a partial sweep raises, never returns.
    Each page is normalised as it arrives, while the next ones are on their way: at 100,000
    members the whole frame took seconds after the last page."""
    pages = [members_frame(records, address_fields) for records in client.member_sweep(page_size)]
    if not pages:
        return members_frame([], address_fields)
    return distinct_members(pd.concat(pages, ignore_index=True))
