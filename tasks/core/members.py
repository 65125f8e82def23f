"""Novi's member records as the members frame the planner reads (tasks.core.schema.MEMBER_COLUMNS):
names cleaned, addresses matched, committee seats and custom fields read, and every record whose
fields could make a member look ineligible quarantined instead. Pure: records in, a frame out
(tasks.novi reads the records)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pandas as pd

from tasks.core import addresses
from tasks.core.schema import COMMITTEES, CONTACT_FIELDS, CUSTOM_FIELDS, MEMBER_COLUMNS


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
