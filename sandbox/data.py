"""Seeded, deterministic Novi member records at any size, with Novi's field names and quirks.

Record i is a pure function of (seed, i), so a million-member site costs no memory until its
pages are read, and two sandboxes with the same seed serve the same members.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

FIRST = ["Ada", "Ben", "Chloé", "Dev", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jon", "Kemal", "Lena",
         "Mateo", "Nia", "Oskar", "Priya", "Quinn", "Rosa", "Sam", "Tomás", "Uma", "Viktor", "Wen", "Yara"]
LAST = ["Adams", "Brown", "Chen", "Diaz", "Evans", "Fischer", "García", "Hughes", "Ivanova", "Jones", "Kim",
        "Lopez", "Müller", "Nguyen", "O'Brien", "Patel", "Quist", "Rossi", "Smith", "Tanaka", "Ueda", "Vogel"]
DOMAINS = ["example.org", "example.com", "mail.example.net"]

MEMBER_TYPES = [
    {"UniqueID": "7e1c0000-0000-4000-8000-000000000001", "Name": "Regular", "Description": "Full member",
     "ForCompanies": False},
    {"UniqueID": "7e1c0000-0000-4000-8000-000000000002", "Name": "Student", "Description": "Student member",
     "ForCompanies": False},
    {"UniqueID": "7e1c0000-0000-4000-8000-000000000003", "Name": "Retired", "Description": "Retired member",
     "ForCompanies": False},
    {"UniqueID": "7e1c0000-0000-4000-8000-000000000004", "Name": "Corporate", "Description": "Company member",
     "ForCompanies": True},
]
GROUPS = [
    {"UniqueID": "9a0b0000-0000-4000-8000-000000000001", "Name": "Board of Directors", "share": 0.03},
    {"UniqueID": "9a0b0000-0000-4000-8000-000000000002", "Name": "Conference Committee", "share": 0.08},
    {"UniqueID": "9a0b0000-0000-4000-8000-000000000003", "Name": "Volunteers", "share": 0.15},
]
# Committees, as Novi's `Committees` entries carry them (a guess at the shape's details, modelled
# on public integrations: README "Routing"). Seats have terms; some ended, one or two not begun.
COMMITTEES = [
    {"UniqueID": "c0a10000-0000-4000-8000-000000000001", "Name": "Finance Committee", "share": 0.04},
    {"UniqueID": "c0a10000-0000-4000-8000-000000000002", "Name": "Events Committee", "share": 0.05},
]
CHAPTERS = ["North", "South", "East", "West"]
STATUSES = [("current", 0.70), ("grace_period", 0.06), ("expired", 0.14), ("non_member", 0.05), ("prospect", 0.05)]
REFUSED_FORMS = ["{local}@localhost", "{local}@exa mple.org", "{local}ü@example.org", "{local}@example.org."]


@dataclass(frozen=True)
class Mix:
    """Shares of each quirk; the defaults give a realistic site."""

    inactive: float = 0.02
    company: float = 0.05
    opted_out: float = 0.03
    plus_as_space: float = 0.02
    account_email_only: float = 0.03
    duplicate_address: float = 0.01
    refused_address: float = 0.01


REALISTIC = Mix()
CLEAN = Mix(0, 0, 0, 0, 0, 0, 0)  # an ordinary active person, for members the sandbox adds


def member_id(index: int) -> str:
    """A GUID-shaped UniqueID that encodes the record's index."""
    return f"5a1d0000-0000-4000-8000-{index:012d}"


def index_of(unique_id: str) -> int | None:
    head, _, tail = unique_id.lower().rpartition("-")
    if head != "5a1d0000-0000-4000-8000" or not tail.isdigit():
        return None
    return int(tail)


def _rng(seed: int, index: int) -> random.Random:
    return random.Random(seed * 1_000_003 + index)


def clean_address(seed: int, index: int, domains: Sequence[str] = DOMAINS) -> str:
    """The ordinary address of record `index` (before any quirk)."""
    rng = _rng(seed, index)
    first, last = rng.choice(FIRST), rng.choice(LAST)
    local = f"{_ascii(first)}.{_ascii(last)}{index}".lower()
    return f"{local}@{domains[rng.randrange(len(DOMAINS)) % len(domains)]}"


def _ascii(name: str) -> str:
    table = str.maketrans({"é": "e", "í": "i", "á": "a", "ü": "u", "'": ""})
    return name.translate(table)


def _pick(rng: random.Random, shares: list[tuple[str, float]]) -> str:
    roll, total = rng.random(), 0.0
    for value, share in shares:
        total += share
        if roll < total:
            return value
    return shares[-1][0]


def _quirks(seed: int, index: int) -> random.Random:
    return random.Random(seed * 7_919 + index)  # quirks drawn independently of the names


def is_company(seed: int, index: int, mix: Mix = REALISTIC) -> bool:
    """Whether record `index` is a company (its second quirk draw, after the status)."""
    if index < 0:
        return False
    rng = _quirks(seed, index)
    rng.random()
    return rng.random() < mix.company


def parent_of(seed: int, index: int, mix: Mix = REALISTIC) -> int | None:
    """The company a person belongs to: one of the two records just before it (a guess at how
    Novi links people to companies: README "Routing")."""
    if mix.company == 0 or is_company(seed, index, mix):
        return None
    return next((i for i in (index - 1, index - 2) if is_company(seed, i, mix)), None)


def make_member(seed: int, index: int, mix: Mix = REALISTIC, domains: Sequence[str] = DOMAINS) -> dict:
    """Record `index` of a site seeded with `seed`, exactly as Novi's /api/members returns it.

    Companies name the person after them as their primary contact and the one after that (if
    theirs) as their billing contact; a company's people whose own status would be non_member
    or prospect inherit their membership from it (MemberStatus inheriting)."""
    rng = _rng(seed, index)
    first, last = rng.choice(FIRST), rng.choice(LAST)
    address = clean_address(seed, index, domains)
    rng = _quirks(seed, index)
    status = _pick(rng, STATUSES)
    company = rng.random() < mix.company
    parent = None if company else parent_of(seed, index, mix)
    if parent is not None and status in ("non_member", "prospect"):
        status = "inheriting"
    primary = billing = None
    if company:
        people = [i for i in (index + 1, index + 2) if parent_of(seed, i, mix) == index]
        primary, billing = (member_id(people[0]), member_id(people[-1])) if people else (None, None)
    record_type = MEMBER_TYPES[3] if company else MEMBER_TYPES[rng.choice([0, 0, 0, 1, 2])]
    email: str | None = address
    account_email: str | None = address
    quirk = rng.random()
    edges = [mix.plus_as_space, mix.account_email_only, mix.duplicate_address, mix.refused_address]
    if quirk < edges[0]:
        local, _, domain = address.partition("@")
        email = f"{local} news@{domain}"       # Novi returns jane+news@ as "jane news@"
        account_email = f"{local}+news@{domain}"
    elif quirk < sum(edges[:2]):
        email = None                            # only the login address is known
    elif quirk < sum(edges[:3]) and index > 0:
        email = clean_address(seed, index - 1, domains)  # the same address on two records
    elif quirk < sum(edges):
        local = address.partition("@")[0]
        email = rng.choice(REFUSED_FORMS).format(local=local)
    year = {"current": 2027, "grace_period": 2026, "expired": 2025}.get(status)
    expires = f"{year}-{rng.randint(1, 12):02d}-28T00:00:00" if year else None
    if status == "grace_period":
        expires = "2026-11-15T00:00:00"
    groups = [{"GroupUniqueID": g["UniqueID"], "GroupName": g["Name"], "InheritingMember": False,
               "JoinDate": "2024-03-01T09:30:00.1234567-05:00"} for g in GROUPS if rng.random() < g["share"]]
    return {
        "UniqueID": member_id(index),
        "Name": f"{last} Holdings {index}" if company else f"{first} {last}",  # a company name is unique
        "FirstName": None if company else first,
        "LastName": None if company else last,
        "Email": email,
        "AccountEmail": account_email,
        "PersonalEmail": None,
        "Active": rng.random() >= mix.inactive,
        "MemberStatus": status,
        "MemberSubStatus": None,
        "MembershipExpires": expires,
        "MemberSince": f"20{rng.randint(10, 24):02d}-0{rng.randint(1, 9)}-01T00:00:00",
        "MemberType": record_type if status != "prospect" else None,
        "CustomerType": "Company" if company else "Person",
        "ParentCustomerUniqueID": member_id(parent) if parent is not None else None,
        "PrimaryContactUniqueId": primary,
        "BillingContactUniqueId": billing,
        "Groups": groups or None,
        "UnsubscribeFromEmails": rng.random() < mix.opted_out,
        "CustomFields": {"Chapter": {"Name": "Chapter", "Value": rng.choice(CHAPTERS)}},
        "Committees": None if company else _committees(seed, index),
        "Image": "",
        "CreatedDate": "2019-04-02T10:11:12.1234567-04:00",
        "LastUpdatedDate": "2026-10-28T13:31:52.4566667-04:00",
    }


def seat(committee: dict, position: str, start: str, end: str | None, index: int) -> dict:
    return {"CommitteeMemberUniqueID": f"c5ea0000-0000-4000-8000-{index:012d}", "CommitteeUniqueID": committee["UniqueID"],
            "CommitteeName": committee["Name"], "PositionName": position, "StartDate": start, "EndDate": end}


def _committees(seed: int, index: int) -> list[dict] | None:
    """A person's committee seats, drawn apart from the rest of the record (the same sites as before)."""
    rng = random.Random(seed * 104_729 + index)
    seats = []
    for committee in COMMITTEES:
        if rng.random() >= committee["share"]:
            continue
        position = "Chair" if rng.random() < 0.15 else "Member"
        term = rng.random()
        if term < 0.15:    # a term that ended in the spring
            start, end = "2024-07-01T00:00:00-04:00", "2026-06-30T23:59:59-04:00"
        elif term < 0.2:   # a term that begins next year
            start, end = "2027-01-01T00:00:00-05:00", "2028-12-31T23:59:59-05:00"
        elif term < 0.6:   # open-ended
            start, end = "2025-01-01T00:00:00-05:00", None
        else:
            start, end = "2025-07-01T00:00:00-04:00", "2027-06-30T23:59:59-04:00"
        seats.append(seat(committee, position, start, end, index))
    return seats or None


def member_types_body() -> dict:
    return {"TotalCount": len(MEMBER_TYPES), "Results": MEMBER_TYPES}


def groups_body() -> dict:
    results = [{"UniqueID": g["UniqueID"], "Name": g["Name"]} for g in GROUPS]
    return {"TotalCount": len(results), "Results": results}
