"""Novi AMS: the client, the member sweep and the members frame (see reference/novi-api.md)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from urllib.parse import urlsplit

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.core import addresses
from tasks.core.schema import COMMITTEES, CONTACT_FIELDS, CUSTOM_FIELDS, MEMBER_COLUMNS, NOVI_PAGE_SIZE
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


# Fields whose absence or wrong type could make a member look ineligible, and so cause a
# removal: such a record is quarantined instead (a key scoped to fewer fields looks like this).
_TYPED_FIELDS: list[tuple[str, tuple[type, ...], bool, str]] = [
    # field, accepted types, whether it must be present, what it should be
    ("Active", (bool,), True, "true/false"),
    # A null or blank status is a record we cannot read, not a lapse: treated as "status
    # missing" it made members look ineligible and be removed.
    ("MemberStatus", (str,), True, "text"),
    ("CustomerType", (str, type(None)), True, "text"),
    ("UnsubscribeFromEmails", (bool, type(None)), False, "true/false"),
    ("Groups", (list, type(None)), False, "a list"),
    ("MemberType", (dict, str, type(None)), False, "an object"),
]


def _field_problem(record: dict, address_fields: Sequence[str]) -> str | None:
    for field, types, required, should_be in _TYPED_FIELDS:
        if field not in record:
            if required:
                return f"{field} is missing"
        elif required and (record[field] is None or (isinstance(record[field], str) and not record[field].strip())):
            if type(None) not in types:
                return f"{field} is empty"
        elif not isinstance(record[field], types) or (bool not in types and isinstance(record[field], bool)):
            return f"{field} is not {should_be}"
    for field in address_fields:
        if not isinstance(record.get(field), (str, type(None))):
            return f"{field} is not text"
    return None


def _display_name(value: str) -> str:
    """A name safe to hand to Mailman: no control characters, single spaces, at most 200 characters."""
    return " ".join(_CONTROL.sub(" ", value).split())[:200]


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _text(value: object) -> str | None:
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return None


def _id(value: object) -> str | None:
    """A UniqueID another record names, in the form records are matched by (lowercase)."""
    text = _text(value) if isinstance(value, str) else None
    return text.lower() if text else None


def _seats(committees: object) -> list[tuple] | None:
    """A record's committee seats (`Committees`: a list, or null): (id, name, position, start,
    end), the dates as Novi sends them (text). They are read as dates only where a rule names
    committees (tasks.core.planner), not for every record of every sweep. None where the field
    cannot be read: not a list, an entry not an object, a date not text."""
    if committees is None:
        return []
    if not isinstance(committees, list) or not all(
            isinstance(c, dict) and all(isinstance(c.get(d), (str, type(None))) for d in ("StartDate", "EndDate"))
            for c in committees):
        return None
    return [(str(c.get("CommitteeUniqueID") or "").strip().lower(), (_text(c.get("CommitteeName")) or "").casefold(),
             (_text(c.get("PositionName")) or "").casefold(), _text(c.get("StartDate")), _text(c.get("EndDate")))
            for c in committees]


def _custom_fields(fields: object) -> tuple[dict[str, str], list[str]]:
    """A record's custom fields with a value: name (as Novi shows it) → value; and the names of
    those whose value cannot be read (a list, an object), or `CustomFields` itself when it is
    neither an object nor a list. Keyed by field name, or a list of entries: each entry's
    `CustomFieldName` wins when it has one. A true/false value reads as `true`/`false`."""
    if fields is None:
        return {}, []
    if not isinstance(fields, (dict, list)):
        return {}, [CUSTOM_FIELDS]
    entries = fields.items() if isinstance(fields, dict) else ((None, f) for f in fields)
    found, unreadable = {}, []
    for key, entry in entries:
        entry = entry if isinstance(entry, dict) else {"Value": entry}
        name = _text(entry.get("CustomFieldName")) or (_text(key) if isinstance(key, str) else None)
        value = entry.get("Value")
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (int, float)):
            value = str(value)
        elif isinstance(value, str):
            value = _text(value)
        elif value is not None:
            unreadable.append(f"{CUSTOM_FIELDS}.{name}" if name else CUSTOM_FIELDS)
            continue
        if name and value is not None:
            found[name] = value
    return found, unreadable


def members_frame(records: Sequence[dict], address_fields: Sequence[str] = ("Email", "AccountEmail")) -> pd.DataFrame:
    """Normalise Novi records into the members frame the planner reads.

    A record whose address is missing or that Mailman would refuse, or whose fields have the
    wrong type, keeps its row with a `quarantine` reason: it is never subscribed and never the
    cause of a removal.
    """
    get = lambda field: [r.get(field) for r in records]  # noqa: E731 - column extraction
    ids = pd.Series([str(r.get("UniqueID")).strip() for r in records], dtype="string")

    address = pd.Series(pd.NA, index=ids.index, dtype="string")
    for field in address_fields:
        candidate = addresses.repair(pd.Series(get(field), dtype="object").map(
            lambda v: v if isinstance(v, str) else None))
        address = address.fillna(candidate)

    first = [_text(v) for v in get("FirstName")]
    last = [_text(v) for v in get("LastName")]
    name = [_text(v) for v in get("Name")]
    display = [_display_name(" ".join(p for p in (given, family) if p) or org or "")
               for given, family, org in zip(first, last, name)]

    member_type = [mt if isinstance(mt, dict) else ({"Name": mt} if isinstance(mt, str) else {})
                   for mt in get("MemberType")]
    groups = [g if isinstance(g, list) else [] for g in get("Groups")]
    active_raw = get("Active")
    opt_raw = get("UnsubscribeFromEmails")
    status_raw = get("MemberStatus")
    seats = [_seats(c) for c in get(COMMITTEES)]
    custom = [_custom_fields(f) for f in get(CUSTOM_FIELDS)]
    # Per record, the routing fields that cannot be read (see CONTACT_FIELDS): the lists whose
    # rules read one of them leave the record alone.
    unreadable = [tuple(([COMMITTEES] if s is None else []) + bad
                        + [f for f in CONTACT_FIELDS if not isinstance(r.get(f), (str, type(None)))])
                  for r, s, (_, bad) in zip(records, seats, custom)]

    frame = pd.DataFrame({
        "novi_id": ids,
        "email": address,
        "match_key": addresses.match_key(address),
        "display_name": pd.Series(display, dtype="string"),
        "status": pd.Series([s.strip().lower() if isinstance(s, str) else "" for s in status_raw],
                            dtype="string"),
        "active": pd.Series([a is True for a in active_raw], dtype=bool),
        "customer_type": pd.Series([_text(v) or "" for v in get("CustomerType")], dtype="string"),
        "member_type": pd.Series([_text(mt.get("Name")) or "" for mt in member_type], dtype="string"),
        "member_type_id": pd.Series([(_text(mt.get("UniqueID")) or "").lower() for mt in member_type],
                                    dtype="string"),
        "group_ids": [[str(g.get("GroupUniqueID", "")).lower() for g in gs if isinstance(g, dict)] for gs in groups],
        "group_names": [[str(g.get("GroupName") or "") for g in gs if isinstance(g, dict)] for gs in groups],
        "opted_out": pd.Series([o is True for o in opt_raw], dtype=bool),
        "expires": pd.to_datetime(pd.Series(get("MembershipExpires"), dtype="object"),
                                  errors="coerce", utc=True, format="ISO8601"),
        "seats": [found or [] for found in seats],
        "custom_fields": [found for found, _ in custom],
        **{column: pd.Series([_id(v) for v in get(field)], dtype="string") for column, field in (
            ("parent_id", "ParentCustomerUniqueID"), ("primary_contact_id", "PrimaryContactUniqueId"),
            ("billing_contact_id", "BillingContactUniqueId"))},
    })
    frame["is_person"] = frame["customer_type"].str.casefold() == "person"
    frame["unreadable"] = unreadable

    wrong_type = pd.Series([_field_problem(r, address_fields) for r in records], dtype="string")
    frame["quarantine"] = wrong_type.fillna(addresses.refusal(frame["email"]))
    return frame[MEMBER_COLUMNS]


def distinct_members(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per Novi id (ids match in any case): the last read of each, where it was first
    seen, as `NoviClient.members` keeps them."""
    key = frame["novi_id"].str.lower()
    if not key.duplicated().any():
        return frame
    last = frame.loc[~key.duplicated(keep="last")].set_axis(key[~key.duplicated(keep="last")])
    return last.loc[key.drop_duplicates().to_numpy()].reset_index(drop=True)


@task(name="extract-members", cache_policy=NO_CACHE)  # its reads retry themselves (tasks.http)
def extract_members(client: NoviClient, page_size: int, address_fields: list[str]) -> pd.DataFrame:
    """Sweep every Novi member once and normalise them; a partial sweep raises, never returns.
    Each page is normalised as it arrives, while the next ones are on their way: at 100,000
    members the whole frame took seconds after the last page."""
    pages = [members_frame(records, address_fields) for records in client.member_sweep(page_size)]
    if not pages:
        return members_frame([], address_fields)
    return distinct_members(pd.concat(pages, ignore_index=True))
