"""The plan: members frame + rosters + rules → the changes to make, and why. Pure pandas.

No I/O and no Prefect here, so the full sync, a one-member sync and the benchmark all call
the same function, and tests run it in milliseconds. Every step is a whole-column operation:
planning a million Novi records against a million-address roster takes seconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from tasks.core.addresses import banned
from tasks.core.rules import ListRule, Rules
from tasks.core.schema import (
    COMMITTEES,
    CUSTOM_FIELDS,
    INHERITING,
    STATUSES_ANY,
    CHANGE_COLUMNS,
    OWNER_MODERATOR,
    OWNER_SUBSCRIBER,
    FIGURE_COLUMNS,
    LAPSE_HOLD,
    LAPSE_KEEP,
    LAPSE_UNSUBSCRIBE,
    LEDGER_COLUMNS,
    LEFT_ALONE_COLUMNS,
    MEMORY_COLUMNS,
    PREFERENCE_COLUMNS,
    REGULAR,
    BOUNCING_COLUMNS,
    WANTING_COLUMNS,
    REQUEST_COLUMNS,
    SCOPE_MANAGED,
    SCOPE_MIRROR,
    SELF_OVERRIDE,
    SELF_UNTIL_RENEWAL,
    TIMESTAMP_COLUMNS,
    TOOK,
    ACTIONS,
    Action,
    Delivery,
    How,
    Status,
    empty_ledger,
)

REASON_SUBSCRIBE = "eligible, not on the list"
REASON_RELEASE = "eligible again, delivery was held"
REASON_RENAME = "name changed in Novi"
REASON_NOT_IN_NOVI = "not in Novi"
REASON_UNMANAGED = "unmanaged: not in Novi"
REASON_PROTECTED = "protected address"
REASON_ADDRESS_CHANGED = "address changed in Novi"
REASON_GONE = "no longer in Novi"
REASON_LEFT = "left the list themselves"
REASON_BANNED = "banned in Mailman"
REASON_DUPLICATE = "duplicate address"   # its detail names the Novi record whose address it is
REASON_OPTED_OUT = "opted out of email in Novi"
COMMITTEE_TERM_ENDED = "committee term ended"
REASON_MODERATOR = "holds a position that moderates the list"
REASON_NOT_MODERATOR = "no longer holds a position that moderates the list"
REASON_MODERATOR_GONE = "no longer a moderator in Mailman: not this tool's to track"
REASON_REQUEST = "eligible; their request waiting for the moderator is resolved"
REASON_AWAITING = "their own request waits for their confirmation"
BOUNCE_DISABLED = "delivery disabled by bounces"
BOUNCE_REMOVED = "removed by Mailman after bounces"
REASON_BOUNCED = f"{BOUNCE_REMOVED}: correct the address in Novi"
REASON_STOPPED = "delivery already stopped"
STOPPED_BY = {Delivery.BY_USER: "by the member", Delivery.BY_BOUNCES: "by bounces"}


@dataclass(frozen=True)
class Plan:
    """What a run would do: `changes` to apply, rows `left_alone` with their reason, per-list figures."""

    changes: pd.DataFrame
    left_alone: pd.DataFrame
    figures: pd.DataFrame
    quarantined: pd.DataFrame
    memory: pd.DataFrame  # the ledger after this plan, if every change succeeds (see settle)
    bouncing: pd.DataFrame  # Novi records whose address Mailman stopped or removed for bounces
    # Members whose preferences this plan needs and the roster did not bring (list_id,
    # member_id): read them, fill them into the rosters and plan again (see tasks.run).
    wanting: pd.DataFrame

    def count(self, list_id: str | None = None) -> int:
        if list_id is None:
            return len(self.changes)
        return int((self.changes["list_id"] == list_id).sum())


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
        checks.append(_off_committees(members, rule, now if now is not None else pd.Timestamp.now(tz="UTC")))
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


def _off_committees(members: pd.DataFrame, rule: ListRule, now: pd.Timestamp) -> Check:
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


def _frame(columns: list[str], **data) -> pd.DataFrame:
    return pd.DataFrame({c: data.get(c, pd.Series(dtype="string")) for c in columns}, columns=columns)


def _flag(frame: pd.DataFrame, column: str) -> pd.Series:
    return frame[column].fillna(False).astype(bool)


class ListPlan(NamedTuple):
    changes: pd.DataFrame
    left_alone: pd.DataFrame
    memory: pd.DataFrame
    figures: dict
    bouncing: pd.DataFrame
    wanting: pd.DataFrame


def plan_list(usable: pd.DataFrame, roster: pd.DataFrame, ledger: pd.DataFrame, rule: ListRule,
              quarantined: pd.DataFrame, now: pd.Timestamp, bans: Sequence[str] = (),
              requests: pd.DataFrame | None = None, shared: pd.Series | None = None,
              companies: pd.DataFrame | None = None, moderators: pd.DataFrame | None = None,
              every_company: bool = True) -> ListPlan:
    """Changes, rows left alone, next ledger rows and figures for one list (see `plan`).

    `shared` marks the records whose address another record has too, `companies` are the
    sweep's companies (`companies_of`): both made once for every list. `moderators` and
    `every_company`: see `plan`."""
    shared = usable["match_key"].duplicated(keep=False) if shared is None else shared
    why_not, unsure = judge(usable, rule, now, companies, every_company)
    unjudged = (unsure != "").to_numpy(dtype=bool)
    if unjudged.any():
        # Quarantined on this list, with their address: what cannot be judged is never
        # subscribed nor removed, also not by another record that shares the address.
        quarantined = pd.concat([quarantined, usable.loc[unjudged, ["novi_id", "email", "match_key"]].assign(
            quarantine=unsure[unjudged])], ignore_index=True)
        kept = ~usable["match_key"].isin(usable.loc[unjudged, "match_key"]).to_numpy(dtype=bool)
        usable, why_not, shared = usable.loc[kept], why_not.loc[kept], shared.loc[kept]
    # A narrow list (a committee, a chapter) is planned from the records that can matter to it:
    # eligible ones, those whose address is on its roster or in its ledger, and those sharing an
    # address (the duplicate report). Any other record would join as "not eligible, not on the
    # list" and change nothing; judging a million of them per list cost seconds a list.
    keys = usable["match_key"]
    matters = (why_not == "").to_numpy(dtype=bool) | shared.to_numpy(dtype=bool)
    if not matters.all():
        matters |= keys.isin(roster["match_key"]).to_numpy(dtype=bool) | keys.isin(ledger["match_key"]).to_numpy(
            dtype=bool)
    judged = usable.assign(why_not=why_not) if matters.all() else usable.loc[matters].assign(why_not=why_not.loc[matters])
    winners, duplicates = one_record_per_address(judged, rule)
    joined = join_sides(winners, roster, ledger)
    where = Standing.of(joined, usable, quarantined, rule, bans, requests)
    the_changes = changes(joined, where, rule)
    if rule.moderators_from_positions:
        the_changes = _concat([the_changes, moderator_changes(winners, rule, now, moderators,
                                                              set(quarantined["match_key"].dropna()))], CHANGE_COLUMNS)
    return ListPlan(the_changes, left_alone(joined, where, rule, quarantined, duplicates),
                    _memory(joined, where, rule.list_id, now), figures(joined, where, rule, len(duplicates)),
                    bouncing(joined, where, rule.list_id),
                    joined.loc[where.wants_preferences, ["member_id"]].assign(list_id=rule.list_id))


def moderator_changes(winners: pd.DataFrame, rule: ListRule, now: pd.Timestamp,
                      moderators: pd.DataFrame | None, unjudged: set[str] = frozenset()) -> pd.DataFrame:
    """The list's moderator changes (`moderators_from_positions`): people who belong on the list
    and hold a current seat in one of those positions are made moderators; moderators this tool
    made who no longer do are unmade. Moderators it did not make are never touched.

    `moderators`: the list's moderator roster (match_key, email, member_id) joined with the ones
    this tool made (`made`); a made one no longer on the roster has no member_id. Addresses
    whose seats cannot be judged (`unjudged`, or a position's date that is not a date) are
    neither made nor unmade."""
    if moderators is None:
        moderators = pd.DataFrame({"match_key": pd.Series(dtype="string"), "email": pd.Series(dtype="string"),
                                   "member_id": pd.Series(dtype="string"), "made": pd.Series(dtype=bool)})
    positioned = rule.model_copy(update={"positions": rule.moderators_from_positions})
    seats = _off_committees(winners, positioned, now)
    wanted = winners.loc[winners["eligible"].to_numpy(dtype=bool) & ~seats.off & ~seats.unsure]
    unjudged = set(unjudged) | set(winners.loc[seats.unsure, "match_key"])
    on = moderators.loc[moderators["member_id"].notna()]
    made = moderators.loc[moderators["made"].astype(bool)]
    made = made.loc[~made["match_key"].isin(wanted["match_key"]) & ~made["match_key"].isin(unjudged)]
    add = wanted.loc[~wanted["match_key"].isin(on["match_key"])]
    owner = dict(zip(winners["match_key"], winners["novi_id"]))
    return _concat([
        _frame(CHANGE_COLUMNS, list_id=rule.list_id, action=Action.MODERATE, email=add["email"],
               match_key=add["match_key"], reason=REASON_MODERATOR, novi_id=add["novi_id"],
               display_name=add["display_name"]),
        _frame(CHANGE_COLUMNS, list_id=rule.list_id, action=Action.UNMODERATE, email=made["email"],
               match_key=made["match_key"], member_id=made["member_id"],
               novi_id=made["match_key"].map(owner).astype("string"),
               reason=pd.Series(REASON_NOT_MODERATOR, index=made.index, dtype="string").where(
                   made["member_id"].notna(), REASON_MODERATOR_GONE)),
    ], CHANGE_COLUMNS)


def one_name_per_address(usable: pd.DataFrame, shared: pd.Series) -> pd.DataFrame:
    """Where records share an address, every one of them carries the same name: a person's
    before a company's, an active record's before an inactive one's, then the smallest id's. Mailman keeps one name per address across its
    lists, so two lists picking different records renamed it back and forth every run."""
    if not shared.any():
        return usable
    rows = usable.loc[shared]
    named = rows.loc[rows["display_name"].fillna("") != ""].sort_values(
        ["is_person", "active", "novi_id"], ascending=[False, False, True], kind="stable").drop_duplicates("match_key")
    usable = usable.copy()
    usable.loc[shared, "display_name"] = rows["match_key"].map(named.set_index("match_key")["display_name"])
    return usable


def one_record_per_address(judged: pd.DataFrame, rule: ListRule) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each member judged against the rule (`why_not`), one Novi record per address, and the records set aside.

    Where records share an address, the eligible one wins, then the smallest id (deterministic)."""
    members = judged.assign(eligible=judged["why_not"] == "")
    members = members.sort_values(["match_key", "eligible", "novi_id"], ascending=[True, False, True],
                                  kind="stable")
    duplicate = members["match_key"].duplicated(keep="first").to_numpy()
    winners = members.loc[~duplicate]
    dup_rows = members.loc[duplicate].merge(winners[["match_key", "novi_id"]], on="match_key", suffixes=("", "_kept"))
    duplicates = _frame(LEFT_ALONE_COLUMNS, list_id=rule.list_id, email=dup_rows["email"], novi_id=dup_rows["novi_id"],
                        reason=REASON_DUPLICATE, detail="Novi record " + dup_rows["novi_id_kept"] + " is used")
    return winners, duplicates


def join_sides(winners: pd.DataFrame, roster: pd.DataFrame, ledger: pd.DataFrame) -> pd.DataFrame:
    """One row per address any side knows: Novi's columns, the roster's (`_roster`), the ledger's (`led_`)."""
    side = winners[["match_key", "email", "novi_id", "display_name", "eligible", "why_not", "expires"]].assign(
        in_novi=True)
    on_list = roster[["match_key", "email", "display_name", "member_id", *PREFERENCE_COLUMNS]].assign(
        on_roster_now=True)
    remembered = ledger.drop(columns=["list_id"]).add_prefix("led_").rename(columns={"led_match_key": "match_key"})
    joined = (side.merge(on_list, on="match_key", how="outer", suffixes=("", "_roster"))
              .merge(remembered.assign(in_ledger=True), on="match_key", how="outer"))
    joined.index = pd.RangeIndex(len(joined))
    return joined


@dataclass(frozen=True)
class Standing:
    """Where each joined address stands, as named masks: what the changes, the rows left alone,
    the next ledger and the figures are all read from."""

    in_novi: pd.Series
    on_roster: pd.Series
    in_ledger: pd.Series
    tracked: pd.Series          # a member the ledger manages
    was_left: pd.Series         # the ledger remembers they left by themselves
    eligible: pd.Series
    held: pd.Series
    stopped: pd.Series          # on the list, delivery stopped by the member or by bounces: never held
    bouncing: pd.Series         # on the list, delivery disabled by Mailman after bounces
    bounced: pd.Series          # off the list: Mailman removed the address after bounces; not re-added
    bounced_kept: pd.Series     # ... and such rows the ledger keeps (also while the record is quarantined)
    preferences: pd.DataFrame   # per row, the preferences a subscribe restores (PREFERENCE_COLUMNS)
    owner: pd.Series            # the Novi id the row belongs to (Novi's, else the ledger's)
    owner_in_novi: pd.Series
    owner_quarantined: pd.Series
    quarantined_row: pd.Series
    protected: pd.Series
    managed: pd.Series
    address_changed: pd.Series
    newly_left: pd.Series
    removed: pd.Series          # unsubscribed for lapsing, with preferences worth restoring on renewal
    wants_preferences: pd.Series  # on the list, preferences not read, and the plan removes, holds or moves them
    blocked: pd.Series          # eligible, off the list, and left by themselves: not re-added
    banned: pd.Series           # eligible, off the list, and banned in Mailman: never a subscribe
    request: pd.Series          # the token of a moderator's pending request a subscribe resolves
    awaiting: pd.Series         # eligible, off the list, their own request awaits their confirmation
    requests_for_moderator: int
    requests_for_member: int
    staying: pd.Series
    released: pd.Series
    renamed: pd.Series
    subscribed: pd.Series
    leaving: pd.Series          # managed, no longer eligible (what the lapse policy acts on)
    leave_reason: pd.Series
    unsubscribed: pd.Series

    @classmethod
    def of(cls, joined: pd.DataFrame, usable: pd.DataFrame, quarantined: pd.DataFrame, rule: ListRule,
           bans: Sequence[str] = (), requests: pd.DataFrame | None = None) -> Standing:
        in_novi = _flag(joined, "in_novi")
        on_roster = _flag(joined, "on_roster_now")
        in_ledger = _flag(joined, "in_ledger")
        tracked = in_ledger & (joined["led_status"] == Status.MEMBER).fillna(False)
        was_left = in_ledger & (joined["led_status"] == Status.LEFT).fillna(False)
        eligible = _flag(joined, "eligible") & in_novi
        delivery = joined["delivery_status"].where(on_roster)
        held = (delivery == Delivery.BY_MODERATOR).fillna(False)
        bouncing = (delivery == Delivery.BY_BOUNCES).fillna(False)
        stopped = bouncing | (delivery == Delivery.BY_USER).fillna(False)
        # A member the last run saw with delivery disabled by bounces, now gone: Mailman removed
        # them (it does so after its warnings), not they themselves. The address stays off
        # while Novi still gives it; a new address in Novi is a new row, and is subscribed.
        newly_bounced = ~on_roster & tracked & _flag(joined, "led_on_roster") & (
            joined["led_delivery_status"] == Delivery.BY_BOUNCES).fillna(False)
        was_bounced = in_ledger & (joined["led_status"] == Status.BOUNCED).fillna(False)
        bounced = ~on_roster & in_novi & (newly_bounced | was_bounced)
        owner = joined["novi_id"].fillna(joined["led_novi_id"])
        owner_in_novi = joined["led_novi_id"].isin(usable["novi_id"]).fillna(False)
        owner_quarantined = joined["led_novi_id"].isin(quarantined["novi_id"]).fillna(False)
        # ... and a bounced address is remembered while its Novi record is quarantined, as a left row is.
        bounced_kept = bounced | (~on_roster & owner_quarantined & was_bounced)
        # An address only a quarantined record vouches for is never removed (nor is one the
        # ledger ties to a quarantined record): bad data must not cause a removal.
        quarantined_row = on_roster & ~in_novi & (joined["match_key"].isin(quarantined["match_key"]).fillna(False)
                                                  | owner_quarantined)
        protected = joined["match_key"].isin(rule.protected) & on_roster
        managed = on_roster & ~quarantined_row & (in_novi | in_ledger | (rule.scope == SCOPE_MIRROR))
        address_changed = managed & ~in_novi & in_ledger & owner_in_novi
        # Someone who was on the list and eligible at the last run, is still eligible, and is now
        # missing though this tool did not remove them, left by themselves: they stay off.
        newly_left = (~on_roster & tracked & _flag(joined, "led_on_roster") & _flag(joined, "led_eligible") & eligible
                      & ~newly_bounced)
        blocked = eligible & ~on_roster & ~bounced & _left_by_themselves(joined, newly_left, was_left, rule)
        # Mailman refuses to subscribe a banned address (400, every run): left alone instead.
        # A banned address already on the list stays, as in Mailman.
        is_banned = eligible & ~on_roster & ~blocked & ~bounced & (
            banned(joined["match_key"], bans) if bans else False)

        staying = eligible & on_roster
        # Holds are released only on lists whose rule holds lapsed members: elsewhere a hold was
        # set by a moderator, not by this tool.
        released = staying & held & (rule.lapsed == LAPSE_HOLD)
        novi_name = joined["display_name"].fillna("")
        renamed = staying & rule.update_names & (novi_name != "") & (
            novi_name != joined["display_name_roster"].fillna(""))
        # A subscription request pending for this address: one waiting for the moderator is
        # resolved by the subscribe (Novi already says they belong); one waiting for the
        # person's own confirmation is theirs to answer, and is left alone.
        pending = requests if requests is not None else pd.DataFrame(columns=REQUEST_COLUMNS)
        by_moderator = pending.loc[pending["owner"] == OWNER_MODERATOR].drop_duplicates("match_key")
        by_member = set(pending.loc[pending["owner"] == OWNER_SUBSCRIBER, "match_key"])
        off_and_kept_off = ~on_roster & (blocked | is_banned | bounced)
        awaiting = eligible & ~off_and_kept_off & ~on_roster & joined["match_key"].isin(by_member).fillna(False)
        subscribed = eligible & ~on_roster & ~off_and_kept_off & ~awaiting
        request = joined["match_key"].map(by_moderator.set_index("match_key")["token"]).where(subscribed)
        resolved = set(joined.loc[request.notna(), "match_key"])
        leaving = managed & ~eligible & ~protected & ~address_changed
        leave_reason = joined["why_not"].where(in_novi, pd.Series(
            np.where(in_ledger, REASON_GONE, REASON_NOT_IN_NOVI), index=joined.index, dtype="string"))
        # An old address of a member whose Novi record now carries another one goes, whatever
        # the lapse policy: the member is subscribed under the new address instead.
        unsubscribed = address_changed & ~protected
        removed = pd.Series(False, index=joined.index)
        # Whose preferences matter: a member moving to a new address, one removed (who may
        # renew, or whose removal an undo may take back: it restores them), one about to be held
        # (not over a delivery they stopped themselves).
        # A bouncing member's are read once (the ledger keeps them): Mailman may remove them
        # before their new address is known.
        matter = unsubscribed | (bouncing & joined["led_delivery_mode"].isna())
        # An old address's preferences are remembered too: if the new address's subscribe
        # fails after the old one's removal took, the next run still has them.
        removed = address_changed & ~protected & _worth_keeping(joined)
        if rule.lapsed == LAPSE_UNSUBSCRIBE:
            unsubscribed = unsubscribed | leaving
            removed = removed | (leaving & in_novi & _worth_keeping(joined))
            matter |= leaving
        elif rule.lapsed == LAPSE_HOLD:
            matter |= leaving & ~held & ~bouncing
        wants_preferences = matter & on_roster & joined["delivery_mode"].isna()
        return cls(in_novi=in_novi, on_roster=on_roster, in_ledger=in_ledger, tracked=tracked, was_left=was_left,
                   eligible=eligible, held=held, stopped=stopped, bouncing=bouncing, bounced=bounced,
                   bounced_kept=bounced_kept,
                   preferences=_preferences(joined, owner, address_changed, in_ledger & ~on_roster),
                   owner=owner, owner_in_novi=owner_in_novi, removed=removed,
                   wants_preferences=wants_preferences,
                   owner_quarantined=owner_quarantined, quarantined_row=quarantined_row, protected=protected,
                   managed=managed, address_changed=address_changed, newly_left=newly_left, blocked=blocked,
                   banned=is_banned, request=request, awaiting=awaiting,
                   requests_for_moderator=int((~by_moderator["match_key"].isin(resolved)).sum()),
                   requests_for_member=len(by_member),
                   staying=staying, released=released, renamed=renamed, subscribed=subscribed, leaving=leaving,
                   leave_reason=leave_reason, unsubscribed=unsubscribed)


def _worth_keeping(joined: pd.DataFrame) -> pd.Series:
    """Whether a roster row's preferences differ from a fresh subscription's (worth restoring)."""
    return ((joined["delivery_mode"].fillna(REGULAR) != REGULAR) | (joined["moderation_action"].fillna("") != "")
            | (joined["delivery_status"] == Delivery.BY_USER).fillna(False))


def _preferences(joined: pd.DataFrame, owner: pd.Series, address_changed: pd.Series,
                 remembered: pd.Series) -> pd.DataFrame:
    """Per row, the preferences to subscribe it with: those its Novi member had on this list,
    under the old address the roster still holds (an address change), or as the ledger
    remembers them (a member removed for lapsing, or whose address bounced). A delivery
    status travels only when the member chose it (`by_user`): a new address starts enabled."""
    def of(rows: pd.DataFrame, prefix: str) -> pd.DataFrame:
        # By the member the ledger tied the row to: an address Novi now gives someone else
        # carries its old owner's preferences to the old owner, not to the new one.
        prefs = rows[[prefix + c for c in PREFERENCE_COLUMNS]].set_axis(PREFERENCE_COLUMNS, axis=1)
        return prefs.assign(novi_id=rows["led_novi_id"])
    known = pd.concat([of(joined.loc[address_changed], ""), of(joined.loc[remembered], "led_")])
    known = known.loc[known["novi_id"].notna()].drop_duplicates("novi_id").set_index("novi_id")
    prefs = pd.DataFrame({c: joined["novi_id"].map(known[c]).astype("string") for c in PREFERENCE_COLUMNS},
                         index=joined.index)
    prefs["delivery_mode"] = prefs["delivery_mode"].fillna(REGULAR)
    prefs["moderation_action"] = prefs["moderation_action"].fillna("")
    prefs["delivery_status"] = prefs["delivery_status"].where(prefs["delivery_status"] == Delivery.BY_USER,
                                                              Delivery.ENABLED)
    return prefs


def _left_by_themselves(joined: pd.DataFrame, newly_left: pd.Series, was_left: pd.Series,
                        rule: ListRule) -> pd.Series:
    """Whether each row's Novi member left the list by themselves and the rule keeps them off."""
    left_owners = pd.concat([joined.loc[newly_left, ["novi_id"]].assign(left_expires=joined.loc[newly_left, "expires"]),
                             joined.loc[was_left, ["led_novi_id"]].rename(columns={"led_novi_id": "novi_id"})
                             .assign(left_expires=joined.loc[was_left, "led_left_expires"])])
    if left_owners.empty or rule.self_unsubscribe == SELF_OVERRIDE:
        # Nobody left (mapping onto an empty datetime Series raises under pandas 3), or the
        # rule re-adds everyone.
        return pd.Series(False, index=joined.index)
    left_until = left_owners.groupby("novi_id")["left_expires"].max()
    left = joined["novi_id"].isin(left_until.index).fillna(False)
    if rule.self_unsubscribe == SELF_UNTIL_RENEWAL:
        renewed = joined["expires"] > joined["novi_id"].map(left_until)
        return left & ~renewed.fillna(False).astype(bool)
    return left


def changes(joined: pd.DataFrame, where: Standing, rule: ListRule) -> pd.DataFrame:
    """The list's changes, each with the address it acts on and why."""
    resolving = where.request.notna()
    wanted: list[tuple[pd.Series, str, object, str]] = [
        (where.subscribed & ~resolving, Action.SUBSCRIBE, REASON_SUBSCRIBE, "email"),
        (where.subscribed & resolving, Action.SUBSCRIBE, REASON_REQUEST, "email"),
        (where.released, Action.RELEASE, REASON_RELEASE, "email_roster"),
        (where.renamed, Action.RENAME, REASON_RENAME, "email_roster"),
        (where.address_changed & ~where.protected, Action.UNSUBSCRIBE, REASON_ADDRESS_CHANGED, "email_roster"),
    ]
    if rule.lapsed == LAPSE_UNSUBSCRIBE:
        wanted.append((where.leaving, Action.UNSUBSCRIBE, where.leave_reason, "email_roster"))
    elif rule.lapsed == LAPSE_HOLD:
        wanted.append((where.leaving & ~where.held & ~where.stopped, Action.HOLD, where.leave_reason, "email_roster"))
    parts = []
    for mask, action, reason, email_column in wanted:
        rows = joined.loc[mask]
        if not rows.empty:
            parts.append(_frame(
                CHANGE_COLUMNS, list_id=rule.list_id, action=action, email=rows[email_column],
                match_key=rows["match_key"], reason=_pick(reason, mask), novi_id=where.owner.loc[mask],
                display_name=rows["display_name"], member_id=rows["member_id"], request=where.request.loc[mask],
                previous=rows["display_name_roster"] if action != Action.SUBSCRIBE else pd.Series(dtype="string"),
                # A subscribe carries the preferences to subscribe with; a removal or hold those the
                # roster had, which an undo of the run restores (tasks.core.undo).
                **{c: where.preferences.loc[mask, c] if action == Action.SUBSCRIBE else rows[c]
                   for c in PREFERENCE_COLUMNS}))
    return _concat(parts, CHANGE_COLUMNS)


def left_alone(joined: pd.DataFrame, where: Standing, rule: ListRule, quarantined: pd.DataFrame,
               duplicates: pd.DataFrame) -> pd.DataFrame:
    """Roster rows and Novi records the plan does not act on, each with its reason."""
    w = where
    kept: list[tuple[pd.Series, object]] = [
        (w.on_roster & ~w.in_novi & ~w.in_ledger & ~w.quarantined_row & (rule.scope == SCOPE_MANAGED),
         REASON_UNMANAGED),
        (w.managed & ~w.eligible & w.protected, REASON_PROTECTED),
        (w.blocked, REASON_LEFT),
        (w.banned, REASON_BANNED),
        (w.awaiting, REASON_AWAITING),
        (w.bounced & w.eligible, REASON_BOUNCED),
    ]
    if rule.lapsed == LAPSE_KEEP:
        kept.append((w.leaving, "kept (lapsed: keep): " + w.leave_reason))
    elif rule.lapsed == LAPSE_HOLD:
        kept.append((w.leaving & w.held, "already held: " + w.leave_reason))
        by_whom = joined["delivery_status"].map(STOPPED_BY).fillna("")
        kept.append((w.leaving & w.stopped & ~w.held, f"{REASON_STOPPED} " + by_whom + ": " + w.leave_reason))
    parts = [duplicates]
    for mask, reason in kept:
        rows = joined.loc[mask]
        if not rows.empty:
            parts.append(_frame(LEFT_ALONE_COLUMNS, list_id=rule.list_id,
                                email=rows["email_roster"].fillna(rows["email"]), novi_id=w.owner.loc[mask],
                                reason=_pick(reason, mask)))
    q = joined.loc[w.quarantined_row, ["match_key", "led_novi_id"]]
    if not q.empty:
        # One reason per address: several quarantined records may share it.
        why = q.merge(quarantined.drop_duplicates("match_key"), on="match_key", how="left")["quarantine"].to_numpy()
        by_owner = q["led_novi_id"].map(quarantined.drop_duplicates("novi_id").set_index("novi_id")["quarantine"])
        reason = pd.Series(why, index=q.index, dtype="string").fillna(by_owner.astype("string"))
        parts.append(_frame(LEFT_ALONE_COLUMNS, list_id=rule.list_id, email=joined.loc[q.index, "email_roster"],
                            novi_id=q["led_novi_id"].fillna(pd.NA),
                            reason="quarantined in Novi: " + reason.fillna("unknown")))
    return _concat(parts, LEFT_ALONE_COLUMNS)


def figures(joined: pd.DataFrame, where: Standing, rule: ListRule, duplicates: int) -> dict:
    """The list's counts: what the summary shows and the guards compare."""
    w = where
    seen_last_time = w.tracked & _flag(joined, "led_on_roster")
    return {
        "list_id": rule.list_id,
        "eligible": int(w.eligible.sum()),
        "roster": int(w.on_roster.sum()),
        "managed": int(w.managed.sum()),
        "in_step": int((w.staying & ~w.released & ~w.renamed).sum()),
        "quarantined_on_roster": int(w.quarantined_row.sum()),
        "duplicates": duplicates,
        "remembered": int(seen_last_time.sum()),
        "vanished": int((seen_last_time & ~w.on_roster).sum()),
        "banned": int(w.banned.sum()),
        "requests_for_moderator": w.requests_for_moderator,
        "requests_for_member": w.requests_for_member,
        "bouncing": int(w.bouncing.sum()),
        "bounced": int((w.bounced & w.eligible).sum()),
    }


def bouncing(joined: pd.DataFrame, where: Standing, list_id: str) -> pd.DataFrame:
    """For membership staff: the Novi records whose address Mailman disabled after bounces (on
    the list) or removed after bounces (kept off), so the address can be corrected in Novi."""
    w = where
    on = joined.loc[w.bouncing & w.owner.notna()]
    off = joined.loc[w.bounced]
    return _concat([
        _frame(BOUNCING_COLUMNS, list_id=list_id, email=on["email_roster"], novi_id=w.owner.loc[on.index],
               display_name=on["display_name"].fillna(on["display_name_roster"]), state=BOUNCE_DISABLED),
        _frame(BOUNCING_COLUMNS, list_id=list_id, email=off["email"], novi_id=off["novi_id"],
               display_name=off["display_name"], state=BOUNCE_REMOVED),
    ], BOUNCING_COLUMNS)


def _pick(reason, mask: pd.Series):
    """A reason given once for all rows, or per row."""
    return reason if isinstance(reason, str) else reason.loc[mask]



def _memory(joined: pd.DataFrame, where: Standing, list_id: str, now: pd.Timestamp) -> pd.DataFrame:
    """The list's ledger rows after this plan, if every change succeeds.

    Members: addresses subscribed now, and roster addresses that Novi or the ledger ties to a
    member (adopted on first sight, without any write to Mailman), with their preferences.
    Remembered while their Novi record exists: members who left by themselves, members this
    tool removed for lapsing whose preferences a renewal restores, and (while Novi still gives
    that address) addresses Mailman removed after bounces. Everything else is forgotten.
    A row that depends on a change names it in `waits_on` (see `settle`).
    """
    w = where
    subscribed, unsubscribed, newly_left = w.subscribed, w.unsubscribed, w.newly_left
    member = subscribed | (w.on_roster & (w.in_novi | w.in_ledger))
    off_but_known = ~w.on_roster & (w.owner_in_novi | w.owner_quarantined)
    still_left = w.was_left & off_but_known
    left = (newly_left | still_left) & ~w.on_roster
    # A removed member's row is kept until they are on the list again (under any address).
    on_list_again = joined["led_novi_id"].isin(w.owner.loc[w.on_roster & w.in_novi & ~unsubscribed]).fillna(False)
    still_removed = (w.in_ledger & (joined["led_status"] == Status.REMOVED).fillna(False) & off_but_known
                     & ~on_list_again)
    removed = w.removed | still_removed
    bounced = w.bounced_kept & ~subscribed

    rows = [_memory_rows(joined, w, member, Status.MEMBER, now)]
    for mask, status in ((left & ~removed, Status.LEFT), (removed, Status.REMOVED), (bounced, Status.BOUNCED)):
        # A remembered row of someone subscribed now is kept only if the subscribe fails; a
        # removal's row only if the unsubscribe takes.
        rows.append(_memory_rows(joined, w, mask & ~(member & ~subscribed & ~unsubscribed), status, now))
    frame = pd.concat(rows).assign(list_id=list_id)
    for column in ["list_id", "match_key", "email", "novi_id", "status", "how", "waits_on", *PREFERENCE_COLUMNS]:
        frame[column] = frame[column].astype("string")
    for column in TIMESTAMP_COLUMNS:
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame[MEMORY_COLUMNS].reset_index(drop=True)


def _memory_rows(joined: pd.DataFrame, where: Standing, mask: pd.Series, status: str,
                 now: pd.Timestamp) -> pd.DataFrame:
    """The ledger rows of `mask`'s addresses in one status, each naming the change it waits on
    (see `_memory`)."""
    w = where
    rows = joined.loc[mask]
    idx = rows.index
    is_member = status == Status.MEMBER
    on_roster = w.on_roster.loc[idx]
    subscribed = w.subscribed.loc[idx]
    is_eligible = w.eligible.loc[idx]
    led_how = rows["led_how"]
    how = led_how.where(led_how.notna(), pd.Series(np.where(subscribed, How.SUBSCRIBED, How.ADOPTED),
                                                   index=idx, dtype="string"))
    # Preferences: on the list, as read now, else as last read (a bouncing member's are read
    # once); off it, a subscribe's as it restores them, else as remembered.
    prefs = {}
    for c in PREFERENCE_COLUMNS:
        restored = w.preferences.loc[idx, c].where(subscribed & is_member)
        prefs[c] = rows[c].where(on_roster).fillna(restored).fillna(rows["led_" + c])
    newly_off = (w.newly_left | w.removed).loc[idx] | (
        w.bounced.loc[idx] & (rows["led_status"] != Status.BOUNCED).fillna(True))
    frame = pd.DataFrame({
        "match_key": rows["match_key"],
        "email": rows["email_roster"].fillna(rows["email"]).fillna(rows["led_email"]),
        "novi_id": w.owner.loc[idx],
        "status": status,
        "how": how,
        "on_roster": is_member,
        "eligible": is_eligible.to_numpy(dtype=bool),
        "first_managed_at": rows["led_first_managed_at"].fillna(now),
        # Since when: stamped when the address comes on the roster, or becomes eligible, and kept
        # while it stays so. A row that did not change is then the same row: the ledger writes
        # only the rows that changed (a quiet night, a handful instead of every member).
        "last_seen_on_roster_at": rows["led_last_seen_on_roster_at"].where(
            ~(on_roster | is_member) | (_flag(rows, "led_on_roster") & rows["led_last_seen_on_roster_at"].notna()),
            now),
        "last_eligible_at": rows["led_last_eligible_at"].where(
            ~is_eligible | (_flag(rows, "led_eligible") & rows["led_last_eligible_at"].notna()), now),
        "left_at": pd.NaT if is_member else rows["led_left_at"].where(~newly_off, now),
        "left_expires": pd.NaT if is_member else rows["led_left_expires"].where(
            ~w.newly_left.loc[idx], rows["expires"]),
        **prefs,
    }, index=idx)
    frame["on_roster"] = frame["on_roster"].astype(bool)
    frame["waits_on"] = np.where(subscribed, Action.SUBSCRIBE, np.where(w.unsubscribed.loc[idx], Action.UNSUBSCRIBE, ""))
    return frame


def settle(memory: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    """The ledger rows to store once the changes ran. A row waiting on a change holds the state
    after it (a member after a subscribe; anything but a member after an unsubscribe) and is
    kept if the change took, or the state before it, kept if it did not: a subscribe that did
    not take is not a member, a removal that failed still is. Outcomes carry `list_id`,
    `action`, `match_key`, `outcome`."""
    done = outcomes.loc[outcomes["outcome"].isin(TOOK)]
    took = (done[["list_id", "action", "match_key"]].rename(columns={"action": "waits_on"})
            .assign(took=True).drop_duplicates())
    merged = memory.merge(took, on=["list_id", "waits_on", "match_key"], how="left")
    took = merged["took"].fillna(False).astype(bool).to_numpy()
    waits_on = memory["waits_on"].fillna("").to_numpy()
    is_member = (memory["status"] == Status.MEMBER).to_numpy(dtype=bool)
    after = np.where(waits_on == Action.SUBSCRIBE, is_member, ~is_member)
    keep = (waits_on == "") | (took == after)
    return memory.loc[keep, LEDGER_COLUMNS].reset_index(drop=True)


def _concat(parts: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    parts = [p for p in parts if not p.empty]
    if not parts:
        return _frame(columns)
    return pd.concat(parts, ignore_index=True)[columns]


def plan(members: pd.DataFrame, rosters: Mapping[str, pd.DataFrame], rules: Rules,
         ledger: pd.DataFrame | None = None, now: pd.Timestamp | None = None,
         bans: Mapping[str, Sequence[str]] | None = None,
         requests: Mapping[str, pd.DataFrame] | None = None,
         moderators: Mapping[str, pd.DataFrame] | None = None, every_company: bool = True) -> Plan:
    """Compare who should be on each list (its rule) with who is, for every list in the rules.

    `members` is the members frame, `rosters` maps each dot-form list id to its roster frame,
    `ledger` is what earlier runs remember (none on a first run); their columns are named in
    tasks.core.schema. `bans` maps a list id to the bans that apply to it (the list's and the
    global ones, as Mailman stores them); `requests` a list id to its pending subscription
    requests (tasks.core.schema.REQUEST_COLUMNS); `moderators` a list id with
    `moderators_from_positions` to its moderators (see `moderator_changes`). Quarantined records are never subscribed,
    and an address on a roster that only a quarantined record knows is left alone; so is, on
    one list, a record whose routing fields that list reads cannot be read (`judge`).
    `every_company` False: `members` are not every record (a member run): whether someone is a
    company's contact is left to the full sync.
    """
    ledger = empty_ledger() if ledger is None else ledger
    now = now if now is not None else pd.Timestamp.now(tz="UTC")
    is_quarantined = members["quarantine"].notna()
    usable = members.loc[~is_quarantined & members["match_key"].notna()]
    quarantined = members.loc[is_quarantined, ["novi_id", "email", "match_key", "quarantine"]]

    bans, requests, moderators = bans or {}, requests or {}, moderators or {}
    shared = usable["match_key"].duplicated(keep=False)
    usable = one_name_per_address(usable, shared)
    companies = companies_of(members)  # all of them: a company without an address still has people
    per_list = [plan_list(usable, rosters[rule.list_id], ledger.loc[ledger["list_id"] == rule.list_id], rule,
                          quarantined, now, bans.get(rule.list_id, ()), requests.get(rule.list_id), shared,
                          companies, moderators.get(rule.list_id), every_company)
                for rule in rules.lists]
    changes = _concat([one.changes for one in per_list], CHANGE_COLUMNS)
    changes["action"] = pd.Categorical(changes["action"], categories=list(ACTIONS))
    changes = changes.sort_values(["list_id", "action", "email"], kind="stable", ignore_index=True)
    changes["action"] = changes["action"].astype("string")
    memory = pd.concat([one.memory for one in per_list], ignore_index=True) if per_list else empty_ledger()
    return Plan(changes=changes, left_alone=_concat([one.left_alone for one in per_list], LEFT_ALONE_COLUMNS),
                figures=pd.DataFrame([one.figures for one in per_list], columns=FIGURE_COLUMNS),
                quarantined=quarantined.reset_index(drop=True), memory=memory,
                bouncing=_concat([one.bouncing for one in per_list], BOUNCING_COLUMNS),
                wanting=_concat([one.wanting for one in per_list], WANTING_COLUMNS))
