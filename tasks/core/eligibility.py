"""Who belongs on a list: each Novi member judged against a list's rule, with why not. Pure
pandas, whole columns: statuses, member types, groups, custom fields, committee positions and
their terms, companies and their contacts, and the fields that cannot be read (a member is then
"not judged", never removed on it). The planner (tasks.core.planner) decides what changes."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from tasks.core.rules import ListRule, Rules
from tasks.core.schema import (COMMITTEE_TERM_ENDED, COMMITTEES, CUSTOM_FIELDS, INHERITING, REASON_OPTED_OUT,
                               STATUSES_ANY)


class Check(NamedTuple):
    """One condition of a rule, per member: whether it keeps them off and why, and where the
    fields it reads cannot be read (`unsure`, with why), whether it holds is not known."""

    off: np.ndarray
    reason: object                     # one text for all, or one per member
    unsure: np.ndarray | None = None   # bool per member; `off` is False there
    unsure_reason: object = ""


def ineligibility(members: pd.DataFrame, rule: ListRule, now: pd.Timestamp | None = None,
                  companies: pd.DataFrame | None = None) -> pd.Series:
    """Why each member does not belong on the rule's list ('' where they do): see `judge`."""
    return judge(members, rule, now, companies)[0]


def judge(members: pd.DataFrame, rule: ListRule, now: pd.Timestamp | None = None,
          companies: pd.DataFrame | None = None, every_company: bool = True) -> tuple[pd.Series, pd.Series]:
    """Why each member does not belong on the rule's list ('' where they do), first reason wins;
    and, where nothing readable keeps them off, why the list cannot judge them ('' where it can).

    Unjudged: a routing field the rule reads that cannot be read (tasks.novi: Committees,
    a custom field's value, a contact id), a committee date that is not a date, or, where
    `every_company` is False (a member run, `explain`: only the companies read for these
    people), whether they are a company's contact. Such a member is neither subscribed nor
    removed (`plan_list` quarantines them on this list): bad or partial data never removes.

    `now` judges committee seats: a seat is current from its StartDate (or always, without
    one) until its EndDate (or for good, without one). `companies` (see `companies_of`) judges
    company contacts and people inheriting from a company; by default, the companies among
    `members`."""
    if companies is None and (rule.contacts_of_companies or rule.inheriting):
        companies = companies_of(members)
    unreadable = _unreadable_fields(members, rule)
    checks: list[Check] = []
    if rule.active_only:
        checks.append(Check(~members["active"].to_numpy(dtype=bool), "inactive in Novi"))
    if rule.contacts_of_companies:  # the company's status is judged, not the person's
        checks.append(_off_contacts(members, rule, companies, every_company))
    elif rule.statuses != STATUSES_ANY:
        checks.append(Check(*_off_status(members, rule, companies)))
    if rule.inheriting == "exclude":
        checks.append(Check((members["status"] == INHERITING).fillna(False).to_numpy(dtype=bool),
                            "inherits membership from a company"))
    if rule.committees:
        checks.append(off_committees(members, rule, now if now is not None else pd.Timestamp.now(tz="UTC")))
    for field, values in rule.custom_fields.items():
        have = _field_values(members, field)
        checks.append(Check((~_truths(have).isin({_truth(v) for v in values})).to_numpy(dtype=bool),
                            _said(have, lambda v, f=field, w=" or ".join(values):
                                  f"custom field {f} is {v or 'missing'}, not {w}")))
    for field, values in rule.custom_fields_not.items():
        have = _field_values(members, field)
        checks.append(Check(_truths(have).isin({_truth(v) for v in values}).fillna(False).to_numpy(dtype=bool),
                            _said(have, lambda v, f=field: f"custom field {f} is {v or ''}")))
    if rule.persons_only:
        checks.append(Check(~members["is_person"].to_numpy(dtype=bool), "a company, not a person"))
    if rule.member_types:
        wanted = set(rule.member_types)
        has_type = (members["member_type"].str.casefold().isin(wanted)
                    | members["member_type_id"].isin(wanted))
        checks.append(Check(~has_type.fillna(False).to_numpy(dtype=bool), "member type not on this list"))
    if rule.groups:
        checks.append(Check(~_in_groups(members, set(rule.groups)), "in none of the list's groups"))
    if rule.exclude_opted_out:
        checks.append(Check(members["opted_out"].to_numpy(dtype=bool), REASON_OPTED_OUT))
    offs = [c for c in checks if c.off.any()]
    reason = np.select([c.off for c in offs], [c.reason for c in offs], default="") if offs else ""
    why_not = pd.Series(reason, index=members.index, dtype="string")
    # A field that cannot be read makes every check that reads it unsure: the record is not
    # judged at all. A check unsure of its own (a date, a company not read) only where nothing
    # readable keeps them off.
    judged_on = (why_not == "").to_numpy(dtype=bool)
    unsure = [unreadable] + [c for c in checks if c.unsure is not None and c.unsure.any()]
    unjudged = np.select([unreadable.unsure] + [c.unsure & judged_on for c in unsure[1:]],
                         [c.unsure_reason for c in unsure], default="")
    return why_not.where(~unreadable.unsure, ""), pd.Series(unjudged, index=members.index, dtype="string")


TRUE_WORDS, FALSE_WORDS = frozenset({"true", "yes"}), frozenset({"false", "no"})


def _truth(value: str) -> str:
    """A custom field's value as compared: yes/true (a checkbox Novi may send as true) alike,
    and no/false alike; any other value as it is."""
    return "true" if value in TRUE_WORDS else "false" if value in FALSE_WORDS else value


def _truths(values: pd.Series) -> pd.Series:
    return values.where(~values.isin(TRUE_WORDS | FALSE_WORDS).fillna(False), values.map(_truth, na_action="ignore"))


def _unreadable_fields(members: pd.DataFrame, rule: ListRule) -> Check:
    """The members whose routing fields this rule reads cannot be read (tasks.novi marks them)."""
    reads = {name.casefold() for name in (
        ([COMMITTEES] if rule.committees else [])
        + ([CUSTOM_FIELDS] if rule.custom_fields or rule.custom_fields_not else [])
        + [f"{CUSTOM_FIELDS}.{field}" for field in (*rule.custom_fields, *rule.custom_fields_not)]
        + (["ParentCustomerUniqueID"] if rule.inheriting or "all" in rule.contacts_of_companies else []))}
    unsure = np.zeros(len(members), dtype=bool)
    reason = np.full(len(members), "", dtype=object)
    if reads:
        column = members["unreadable"].to_numpy(dtype=object)
        for i in np.flatnonzero([bool(fields) for fields in column]):
            bad = next((field for field in column[i] if field.casefold() in reads), None)
            if bad:
                unsure[i], reason[i] = True, f"its {bad} cannot be read"
    return Check(np.zeros(len(members), dtype=bool), "", unsure, reason)


def _said(values: pd.Series, text) -> np.ndarray:
    """`text(value)` for each row, made once per distinct value (NA as None): a reason per row
    without building a million strings."""
    codes, distinct = pd.factorize(values, use_na_sentinel=True)
    table = np.array([text(v) for v in distinct] + [text(None)], dtype=object)
    return table[codes]


def companies_of(members: pd.DataFrame) -> pd.DataFrame:
    """The company records among `members` (every one, quarantined or not: a company without an
    address still has contacts), by lowercased UniqueID."""
    rows = members.loc[~members["is_person"].to_numpy(dtype=bool),
                       ["novi_id", "display_name", "status", "active", "primary_contact_id", "billing_contact_id",
                        "unreadable"]]
    return rows.assign(novi_id=rows["novi_id"].str.lower()).drop_duplicates("novi_id").set_index("novi_id")


def _company_counts(companies: pd.DataFrame, rule: ListRule) -> pd.Series:
    """Whether each company is a member by the rule: active (where the rule asks) and in its statuses."""
    counts = companies["active"].astype(bool) if rule.active_only else pd.Series(True, index=companies.index)
    if rule.statuses != STATUSES_ANY:
        counts &= companies["status"].isin(rule.statuses).fillna(False)
    return counts


def _company_state(companies: pd.DataFrame, company_ids: pd.Series) -> pd.Series:
    """Why each named company is not a member: 'company Acme Ltd is status expired'."""
    company = companies.reindex(company_ids.to_numpy())
    name = company["display_name"].fillna("(no name)").to_numpy(dtype=object)
    state = np.where(company["active"].fillna(False).to_numpy(dtype=bool),
                     "status " + company["status"].fillna("").replace("", "missing").to_numpy(dtype=object),
                     "inactive in Novi")
    return pd.Series("company " + name + " is " + state, index=company_ids.index, dtype="object")


def _off_status(members: pd.DataFrame, rule: ListRule, companies: pd.DataFrame | None) -> tuple[np.ndarray, object]:
    """Who is not in the rule's statuses, and why; with `inheriting: include`, a person whose
    parent company is a member counts as one (as does one Novi marks inheriting whose company
    is not in the sweep: Novi's word is all there is)."""
    status = members["status"].fillna("")
    off = ~status.isin(rule.statuses).to_numpy(dtype=bool)
    reason = _said(status, lambda v: f"status {v or 'missing'}")
    if rule.inheriting == "include":
        parent = members["parent_id"]
        known = parent.isin(companies.index).fillna(False).to_numpy(dtype=bool)
        company_counts = parent.map(_company_counts(companies, rule)).eq(True).to_numpy(dtype=bool)
        inherits = (known & company_counts) | (~known & (status == INHERITING).to_numpy(dtype=bool))
        off &= ~inherits
        lapsed = off & known
        if lapsed.any():
            reason = reason.copy()
            reason[lapsed] = reason[lapsed] + "; " + _company_state(companies, parent[lapsed]).to_numpy(dtype=object)
    return off, reason


def _off_contacts(members: pd.DataFrame, rule: ListRule, companies: pd.DataFrame, every_company: bool) -> Check:
    """Who is not a contact (of the rule's kinds) of a member company, and why: their company
    is not a member (the first such company named), or they are nobody's contact. Unsure for
    them where a company's contact id cannot be read (it may name them), or where these are not
    every company (`every_company` False: another may name them)."""
    kinds = set(rule.contacts_of_companies)
    fields = [(column, field) for kind, column, field in (
        ("primary", "primary_contact_id", "PrimaryContactUniqueId"),
        ("billing", "billing_contact_id", "BillingContactUniqueId")) if kind in kinds or "all" in kinds]
    columns = [column for column, _ in fields]
    # (person, company) pairs: named as a contact, and (all) every person whose parent the company is
    pairs = [companies[column].dropna().rename("person").rename_axis("company").reset_index() for column in columns]
    ids = members["novi_id"].str.lower()
    if "all" in kinds:  # its people: a subsidiary company is not one
        parented = members["parent_id"].notna() & members["is_person"]
        pairs.append(pd.DataFrame({"company": members.loc[parented, "parent_id"].to_numpy(),
                                   "person": ids[parented].to_numpy()}))
    pairs = pd.concat(pairs, ignore_index=True).drop_duplicates()
    pairs = pairs.loc[pairs["company"].isin(companies.index)]
    pairs["counts"] = pairs["company"].map(_company_counts(companies, rule)).astype(bool)
    on = ids.isin(pairs.loc[pairs["counts"], "person"]).to_numpy(dtype=bool)
    reason = np.full(len(members), "not a contact of a member company", dtype=object)
    first = pairs.drop_duplicates("person").set_index("person")["company"]
    named = ~on & ids.isin(first.index).to_numpy(dtype=bool)
    if named.any():
        reason[named] = _company_state(companies, ids[named].map(first)).to_numpy(dtype=object)
    unreadable = [(name, field) for name, bad in zip(companies["display_name"], companies["unreadable"])
                  for _, field in fields if field in bad]
    if unreadable:
        name, field = unreadable[0]
        why = f"company {name or '(no name)'}'s {field} cannot be read: it may name them"
    elif not every_company:
        why = reason + "; whether another company names them as its contact is the full sync's to judge"
    else:
        return Check(~on, reason)
    return Check(np.zeros(len(members), dtype=bool), reason, ~on, why)


def _field_values(members: pd.DataFrame, field: str) -> pd.Series:
    """Each member's value of one custom field, casefolded (NA where the member has none); the
    field's name is matched without regard to case."""
    column = members["custom_fields"]
    names = [name for name in set().union(*column) if name.casefold() == field.casefold()]  # "Chapter", "chapter"…
    values = [next((fields[name] for name in names if name in fields), None) for fields in column] if names \
        else [None] * len(column)
    return pd.Series(values, index=members.index, dtype="string").str.casefold()


def off_committees(members: pd.DataFrame, rule: ListRule, now: pd.Timestamp) -> Check:
    """Who holds no current seat on the rule's committees (in its positions), and why: a term
    of theirs there that has ended, one not begun yet, or none at all. An absent date is an
    open start or end; one that is not a date leaves its seat unjudged (unsure), unless
    another seat of theirs is current."""
    wanted, positions = set(rule.committees), set(rule.positions)
    off = np.ones(len(members), dtype=bool)
    reason = np.full(len(members), "no seat on the list's committees", dtype=object)
    unsure = np.zeros(len(members), dtype=bool)
    unsure_reason = np.full(len(members), "", dtype=object)
    column = members["seats"].to_numpy(dtype=object)
    seated = np.flatnonzero([bool(seats) for seats in column])  # the few with any seat at all
    mine = {i: [seat for seat in column[i] if (seat[0] in wanted or seat[1] in wanted)
                and (not positions or seat[2] in positions)] for i in seated}
    # Novi's dates (offsets, up to 7 fraction digits), read once for the seats that count.
    dates = sorted({date for seats in mine.values() for seat in seats for date in seat[3:5] if date is not None})
    when = dict(zip(dates, pd.to_datetime(pd.Series(dates, dtype="object"), errors="coerce", utc=True,
                                          format="ISO8601"))) if dates else {}
    for i, seats in mine.items():
        if not seats:
            continue
        unreadable = [(seat, side, seat[3 + k]) for seat in seats for k, side in enumerate(("StartDate", "EndDate"))
                      if seat[3 + k] is not None and pd.isna(when[seat[3 + k]])]
        readable = [seat for seat in seats if not any(seat is bad for bad, _, _ in unreadable)]
        started = [seat for seat in readable if seat[3] is None or when[seat[3]] <= now]
        if any(seat[4] is None or now < when[seat[4]] for seat in started):
            off[i] = False
        elif unreadable:
            seat, side, value = unreadable[0]
            off[i], unsure[i] = False, True
            unsure_reason[i] = f"committee {seat[1] or seat[0]}: {side} {value!r} is not a date"
        elif started:
            reason[i] = COMMITTEE_TERM_ENDED
        else:
            reason[i] = "committee term not begun yet"
    return Check(off, reason, unsure, unsure_reason)


def explain(members: pd.DataFrame, rules: Rules, now: pd.Timestamp,
            companies: pd.DataFrame | None = None) -> pd.DataFrame:
    """For each Novi record of one person and each list: whether the rules put them on it, and
    if not, the condition that keeps them off or why it cannot be judged here (list_id,
    novi_id, email, belongs, why_not).

    By the rules alone: what Mailman or the ledger may add (a ban, someone who left the list
    themselves) is the plan's, not this. `companies` (`companies_of`): the companies read for
    this person, which judge inheriting; whether they are a company's contact needs every
    company, and is said to be the full sync's to judge where they are none of these'."""
    companies = companies_of(members) if companies is None else companies
    rows = []
    for rule in rules.lists:
        why_not, unsure = judge(members, rule, now, companies, every_company=False)
        why_not = why_not.where(unsure == "", "not judged: " + unsure).where(
            members["quarantine"].isna(), "quarantined: " + members["quarantine"])
        rows += [{"list_id": rule.list_id, "novi_id": novi_id, "email": email, "belongs": reason == "",
                  "why_not": reason} for novi_id, email, reason in zip(members["novi_id"], members["email"], why_not)]
    return pd.DataFrame(rows, columns=["list_id", "novi_id", "email", "belongs", "why_not"])


def unknown_custom_fields(members: pd.DataFrame, rules: Rules) -> list[str]:
    """The custom fields the rules name that no Novi record has, with the fields Novi did
    return: a typo is said once per run, rather than an empty list."""
    named = {field for rule in rules.lists for field in (*rule.custom_fields, *rule.custom_fields_not)}
    if not named:
        return []
    present = {name for fields in members["custom_fields"] for name in fields}
    folded = {name.casefold() for name in present}
    return [f"no Novi record has the custom field {field!r} (Novi returned: {', '.join(sorted(present)) or 'none'})"
            for field in sorted(named) if field.casefold() not in folded]


def _in_groups(members: pd.DataFrame, wanted: set[str]) -> np.ndarray:
    """Whether each member is in at least one wanted group, matched by id or casefolded name."""
    hit = np.zeros(len(members), dtype=bool)
    for column, fold in (("group_ids", False), ("group_names", True)):
        exploded = members[column].explode()
        values = exploded.astype("string")
        if fold:
            values = values.str.casefold()
        found = values.isin(wanted).fillna(False).groupby(level=0).any()
        hit |= found.reindex(members.index, fill_value=False).to_numpy(dtype=bool)
    return hit
