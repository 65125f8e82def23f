"""Routing the way associations organise people: committee seats with terms and positions, and
custom fields. Tables with readable ids; `NOW` is the run's clock."""

from __future__ import annotations

import pandas as pd
import pytest

from tasks.core.eligibility import ineligibility, unknown_custom_fields
from tasks.core.planner import plan_changes
from tasks.core.schema import COMMITTEE_TERM_ENDED
from tasks.core.rules import parse_rules
from tasks.core.schema import Action
from tasks.core.members import members_frame
from tests.conftest import novi_record, roster_frame

L = "finance-committee.example.org"
NOW = pd.Timestamp("2026-12-02T15:00:00Z")


def seat(committee="Finance", position="Member", start="2026-01-01T00:00:00-05:00", end=None, uid=None) -> dict:
    return {"CommitteeMemberUniqueID": f"cm-{committee}-{position}", "CommitteeUniqueID": uid or f"com-{committee}",
            "CommitteeName": committee, "PositionName": position, "StartDate": start, "EndDate": end}


def field(name: str, value) -> dict:
    return {name: {"CustomerUniqueID": "x", "CustomFieldUniqueID": f"cf-{name}", "CustomFieldName": name,
                   "Value": value, "IsSumOfChildren": False}}


def why(rule: dict, **record) -> str:
    """Why one member is kept off the list ('' when they belong)."""
    rules = parse_rules({"lists": [{"list_id": L, **rule}]}, "test")
    return ineligibility(members_frame([novi_record("p", "p@example.org", **record)]), rules.lists[0], NOW).iloc[0]


@pytest.mark.parametrize(("seats", "rule", "expected"), [
    ([seat()], {}, ""),
    ([seat(end=None)], {}, ""),                                                   # an open end is current
    ([seat(end="2027-06-30T00:00:00-04:00")], {}, ""),
    ([seat(end="2026-12-02T15:00:00Z")], {}, COMMITTEE_TERM_ENDED),               # ends this very moment
    ([seat(end="2026-12-02T09:59:59-05:00")], {}, COMMITTEE_TERM_ENDED),          # ended this morning, offset
    ([seat(start="2026-12-03T00:00:00Z")], {}, "committee term not begun yet"),   # starts tomorrow
    ([seat(start=None)], {}, ""),                                                 # no start: always begun
    ([seat(end="2026-06-30T00:00:00Z"), seat(start="2026-07-01T00:00:00Z")], {}, ""),  # a new term began
    ([seat(committee="Awards")], {}, "no seat on the list's committees"),
    (None, {}, "no seat on the list's committees"),                               # Committees: null
    ([seat(uid="COM-77")], {"committees": ["com-77"]}, ""),                       # by UniqueID, any case
    ([seat(position="Chair")], {"positions": ["chair"]}, ""),
    ([seat(position="Member")], {"positions": ["Chair"]}, "no seat on the list's committees"),
    ([seat(position="Chair", end="2026-01-31T00:00:00Z"), seat(position="Member")], {"positions": ["Chair"]},
     COMMITTEE_TERM_ENDED),                                                       # still a member, no longer chair
], ids=["current", "open-end", "ends-later", "ends-now", "ended-today-offset", "starts-tomorrow", "no-start",
        "next-term", "other-committee", "null-committees", "by-uid", "position", "other-position",
        "chair-term-ended"])
def test_a_committee_list_holds_current_seats(seats, rule, expected):
    assert why({"committees": ["Finance"], **rule}, Committees=seats) == expected


def test_a_committee_lists_people_need_not_be_members_when_the_rule_says_any_status():
    assert why({"committees": ["Finance"]}, status="non_member", Committees=[seat()]) == "status non_member"
    assert why({"committees": ["Finance"], "statuses": "any"}, status="non_member", Committees=[seat()]) == ""


@pytest.mark.parametrize(("fields", "rule", "expected"), [
    (field("Chapter", "North"), {"custom_fields": {"Chapter": ["North", "South"]}}, ""),
    (field("Chapter", "south"), {"custom_fields": {"chapter": ["South"]}}, ""),  # names and values, any case
    (field("Chapter", "West"), {"custom_fields": {"Chapter": ["North"]}}, "custom field Chapter is west, not north"),
    ({}, {"custom_fields": {"Chapter": ["North"]}}, "custom field Chapter is missing, not north"),
    (field("Chapter", None), {"custom_fields": {"Chapter": ["North"]}}, "custom field Chapter is missing, not north"),
    (field("Student", "Yes"), {"custom_fields_not": {"Student": ["yes"]}}, "custom field Student is yes"),
    (field("Student", "No"), {"custom_fields_not": {"Student": ["yes"]}}, ""),
    ({}, {"custom_fields_not": {"Student": ["yes"]}}, ""),                       # a missing field never matches
    ({**field("Chapter", "North"), **field("Region", "East")},
     {"custom_fields": {"Chapter": ["North"], "Region": ["West"]}}, "custom field Region is east, not west"),
], ids=["any-of", "any-case", "other-value", "missing", "null-value", "excluded", "not-excluded",
        "missing-not-excluded", "every-field-must-hold"])
def test_a_chapter_list_follows_custom_fields(fields, rule, expected):
    assert why(rule, CustomFields=fields) == expected


def test_conditions_combine_every_key_must_hold():
    rule = {"committees": ["Finance"], "custom_fields": {"Chapter": ["North"]}}
    assert why(rule, Committees=[seat()], CustomFields=field("Chapter", "North")) == ""
    assert why(rule, Committees=[seat()], CustomFields=field("Chapter", "South")) != ""
    assert why(rule, Committees=[], CustomFields=field("Chapter", "North")) != ""


def test_when_a_term_ends_the_next_run_lapses_the_seat_with_its_reason():
    records = [novi_record("ann", "ann@example.org", first="Ann", last="Lee",
                           Committees=[seat(end="2026-12-01T00:00:00Z")]),
               novi_record("bo", "bo@example.org", first="Bo", last="Kim", Committees=[seat()]),
               novi_record("cy", "cy@example.org", first="Cy", last="Ng",
                           Committees=[seat(start="2026-12-02T00:00:00Z")])]
    rules = parse_rules({"lists": [{"list_id": L, "committees": ["Finance"]}]}, "test")
    roster = roster_frame(L, [("ann@example.org", "Ann Lee"), ("bo@example.org", "Bo Kim")])
    plan = plan_changes(members_frame(records), {L: roster}, rules, now=NOW)
    got = sorted((r.action, r.email, r.reason) for r in plan.changes.itertuples())
    assert got == [(Action.SUBSCRIBE, "cy@example.org", "eligible, not on the list"),
                   (Action.UNSUBSCRIBE, "ann@example.org", COMMITTEE_TERM_ENDED)]


def test_a_custom_field_no_record_has_is_reported_with_the_fields_novi_returned():
    members = members_frame([novi_record("a", "a@example.org", CustomFields=field("Chapter", "North")),
                             novi_record("b", "b@example.org", CustomFields=field("Region", "East"))])
    rules = parse_rules({"lists": [{"list_id": L, "custom_fields": {"Chaptre": ["North"]}},
                                   {"list_id": "b.example.org", "custom_fields": {"chapter": ["North"]}}]}, "test")
    assert unknown_custom_fields(members, rules) == [
        "no Novi record has the custom field 'Chaptre' (Novi returned: Chapter, Region)"]


def test_positions_without_committees_are_refused():
    with pytest.raises(Exception, match="seats on committees: name the committees too"):
        parse_rules({"lists": [{"list_id": L, "positions": ["Chair"]}]}, "test")


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype("string").sort_values(list(frame.columns), ignore_index=True)


def test_a_narrow_list_plans_from_the_records_that_matter_exactly_as_from_all_of_them():
    # A committee list judges every record but plans only from those that can matter to it
    # (eligible, on its roster, in its ledger, sharing an address): the plan must be the one
    # made from all of them, over two runs (a term ends between them).
    from tasks.core.planner import plan_list, settle

    ending = "2026-12-10T00:00:00Z"
    records = [
        novi_record("a", "a@x.org", Committees=[seat(end=ending)]),   # seated, subscribed, term ends
        novi_record("b", "b@x.org", Committees=[seat(end="2026-06-30T00:00:00Z")]),  # ended, on the list
        novi_record("c", "c@x.org"),                                    # no seat, nowhere: does not matter
        novi_record("d", "dup@x.org"), novi_record("e", "DUP@x.org"),   # no seat, one address
        novi_record("f", "g@x.org"), novi_record("g", "g@x.org", Committees=[seat()]),  # shares with a seated one
        novi_record("h", "h@x.org", status="expired", Committees=[seat()]),  # seated, lapsed, on the list
        novi_record("q", None, Committees=[seat()]),                     # no address: quarantined
    ]
    roster = roster_frame(L, [("b@x.org", "Pat B"), ("h@x.org", "Pat H"), ("staff@x.org", "Staff")])
    rule = parse_rules({"lists": [{"list_id": L, "committees": ["Finance"], "lapsed": "hold"}]}).lists[0]
    members = members_frame(records)
    usable = members.loc[members["quarantine"].isna() & members["match_key"].notna()]
    quarantined = members.loc[members["quarantine"].notna(), ["novi_id", "email", "match_key", "quarantine"]]
    ledger = None
    for now in (NOW, pd.Timestamp(ending) + pd.Timedelta(days=1)):
        from tasks.core.schema import empty_ledger
        led = empty_ledger() if ledger is None else ledger
        narrow = plan_list(usable, roster, led, rule, quarantined, now)
        whole = plan_list(usable, roster, led, rule, quarantined, now, shared=pd.Series(True, index=usable.index))
        for part in ("changes", "left_alone", "memory", "bouncing", "wanting"):
            pd.testing.assert_frame_equal(_sorted(getattr(narrow, part)), _sorted(getattr(whole, part)), obj=part)
        assert narrow.figures == whole.figures
        ledger = settle(narrow.memory, narrow.changes.assign(outcome="applied"))
        roster = pd.concat([roster, roster_frame(L, [(e, "Pat") for e in narrow.changes.loc[
            narrow.changes["action"] == Action.SUBSCRIBE, "email"]])], ignore_index=True)
    assert {"a@x.org", "g@x.org"} <= set(ledger["match_key"])  # the second run did see the subscribes


def company(uid: str, name: str, status: str = "current", primary: str | None = None, billing: str | None = None,
            active: bool = True, email: str | None = None) -> dict:
    return novi_record(uid, email, person=False, status=status, active=active, first=None, last="", Name=name,
                       PrimaryContactUniqueId=primary, BillingContactUniqueId=billing)


def person(uid: str, status: str = "current", parent: str | None = None, **extra) -> dict:
    return novi_record(uid, f"{uid}@x.org", status=status, ParentCustomerUniqueID=parent, **extra)


# Acme (current) names p1 its primary and p2 its billing contact; Bolt (expired) names p3 for both.
# p1 to p4 are their people; p5 stands alone; p6 and p7 inherit from no company in the sweep.
COMPANIES = [company("ACME", "Acme Ltd", primary="P1", billing="p2", email="info@acme.example"),
             company("bolt", "Bolt Ltd", status="expired", primary="p3", billing="p3")]
PEOPLE = {"p1": person("p1", "non_member", "acme"), "p2": person("p2", "inheriting", "acme"),
          "p3": person("p3", "inheriting", "BOLT"), "p4": person("p4", "current", "acme"),
          "p5": person("p5"), "p6": person("p6", "inheriting"), "p7": person("p7", "inheriting", "ghost")}


def why_in(rule: dict, who: str, companies=COMPANIES, **changes) -> str:
    """Why one person is kept off the list, judged among the companies of the sweep."""
    records = [*companies, *({**r, **changes} if uid == who else r for uid, r in PEOPLE.items())]
    rules = parse_rules({"lists": [{"list_id": L, **rule}]}, "test")
    members = members_frame(records)
    return ineligibility(members, rules.lists[0], NOW).iloc[len(companies) + list(PEOPLE).index(who)]


NOT_A_CONTACT = "not a contact of a member company"
BOLT_LAPSED = "company Bolt Ltd is status expired"


@pytest.mark.parametrize(("rule", "who", "expected"), [
    ({"contacts_of_companies": "primary"}, "p1", ""),          # their own status (non_member) is not judged
    ({"contacts_of_companies": "primary"}, "p2", NOT_A_CONTACT),
    ({"contacts_of_companies": "primary"}, "p3", BOLT_LAPSED),
    ({"contacts_of_companies": "primary"}, "p5", NOT_A_CONTACT),
    ({"contacts_of_companies": "billing"}, "p2", ""),
    ({"contacts_of_companies": "billing"}, "p1", NOT_A_CONTACT),
    ({"contacts_of_companies": ["primary", "billing"]}, "p1", ""),
    ({"contacts_of_companies": ["primary", "billing"]}, "p2", ""),
    ({"contacts_of_companies": "all"}, "p4", ""),              # every person of a member company
    ({"contacts_of_companies": "all"}, "p3", BOLT_LAPSED),
    ({"contacts_of_companies": "all"}, "p7", NOT_A_CONTACT),   # a parent the sweep does not hold
    ({"contacts_of_companies": "primary", "statuses": ["current", "expired"]}, "p3", ""),
    ({"contacts_of_companies": "primary", "statuses": "any"}, "p3", ""),
], ids=["primary", "billing-not-primary", "company-lapsed", "nobodys-contact", "billing", "primary-not-billing",
        "either-kind-primary", "either-kind-billing", "all-people", "all-company-lapsed", "all-unknown-parent",
        "statuses-judge-the-company", "any-company-status"])
def test_a_contacts_list_holds_the_contacts_of_member_companies(rule, who, expected):
    assert why_in(rule, who) == expected


def test_all_the_people_of_a_company_are_people_not_its_subsidiary_companies():
    """Issue 27, item 12: `contacts_of_companies: all` counted a subsidiary company as a person."""
    subsidiary = company("acme-east", "Acme East", email="east@acme.example")
    subsidiary["ParentCustomerUniqueID"] = "acme"
    records = [*COMPANIES, subsidiary]
    rules = parse_rules({"lists": [{"list_id": L, "contacts_of_companies": "all"}]}, "test")
    assert ineligibility(members_frame(records), rules.lists[0], NOW).iloc[2] == NOT_A_CONTACT


def test_a_contacts_list_judges_the_company_s_activity_and_the_person_s_own_address_and_wishes():
    inactive_bolt = [COMPANIES[0], {**COMPANIES[1], "Active": False}]
    assert why_in({"contacts_of_companies": "primary", "statuses": "any"}, "p3", inactive_bolt) == \
        "company Bolt Ltd is inactive in Novi"
    assert why_in({"contacts_of_companies": "primary"}, "p1", Active=False) == "inactive in Novi"
    assert why_in({"contacts_of_companies": "primary"}, "p1", UnsubscribeFromEmails=True) == \
        "opted out of email in Novi"
    rules = parse_rules({"lists": [{"list_id": L, "contacts_of_companies": "all"}]}, "test")
    assert ineligibility(members_frame(COMPANIES), rules.lists[0], NOW).iloc[0] == NOT_A_CONTACT  # not its own


@pytest.mark.parametrize(("inheriting", "who", "expected"), [
    (None, "p2", "status inheriting"),                         # unset: their own status decides, as before
    (None, "p1", "status non_member"),
    ("include", "p1", ""),                                     # a member company's person is a member
    ("include", "p2", ""),
    ("include", "p3", f"status inheriting; {BOLT_LAPSED}"),    # ... until the company lapses
    ("include", "p4", ""),
    ("include", "p6", ""),                                     # inheriting, company unknown: Novi's word
    ("include", "p7", ""),
    ("exclude", "p2", "status inheriting"),
    ("exclude", "p4", ""),                                     # their own membership counts
    ("exclude", "p1", "status non_member"),
], ids=["unset-inheriting", "unset-non-member", "include-parent-current", "include-inheriting",
        "include-company-lapsed", "include-own-membership", "include-no-parent", "include-parent-unknown",
        "exclude-inheriting", "exclude-own-membership", "exclude-non-member"])
def test_people_who_inherit_from_a_company_are_included_or_excluded(inheriting, who, expected):
    rule = {"inheriting": inheriting} if inheriting else {}
    assert why_in(rule, who) == expected


def test_excluding_inheriting_people_holds_whatever_statuses_the_rule_allows():
    for statuses in ("any", ["current", "inheriting"]):
        assert why_in({"inheriting": "exclude", "statuses": statuses}, "p2") == "inherits membership from a company"
        assert why_in({"inheriting": "exclude", "statuses": statuses}, "p4") == ""


def test_a_company_without_an_address_still_makes_its_contacts_members():
    # Companies often have no address: quarantined as a record, still a company for its people.
    records = [company("acme", "Acme Ltd", primary="p1"), person("p1", "non_member", "acme")]
    rules = parse_rules({"lists": [{"list_id": L, "contacts_of_companies": "primary"}]}, "test")
    p = plan_changes(members_frame(records), {L: roster_frame(L, [])}, rules, now=NOW)
    assert list(p.changes["email"]) == ["p1@x.org"]
    assert list(p.quarantined["novi_id"]) == ["acme"]


@pytest.mark.parametrize(("rule", "error"), [
    ({"contacts_of_companies": "everyone"}, "contacts_of_companies"),
    ({"contacts_of_companies": "primary", "inheriting": "include"}, "give one of the two"),
    ({"inheriting": "maybe"}, "inheriting"),
])
def test_company_keys_are_validated(rule, error):
    from tasks.errors import RulesError
    with pytest.raises(RulesError, match=error):
        parse_rules({"lists": [{"list_id": L, **rule}]}, "test")


def moderator_roster(rows: list[tuple]) -> pd.DataFrame:
    """(email, on the moderator roster, made by this tool) tuples, as tasks.run.read_moderators joins them."""
    email = pd.Series([r[0] for r in rows], dtype="string")
    return pd.DataFrame({"match_key": email, "email": email,
                         "member_id": pd.Series([f"mod-{r[0]}" if r[1] else pd.NA for r in rows], dtype="string"),
                         "made": pd.Series([r[2] for r in rows], dtype=bool)})


CHAIR = [seat(position="Chair")]


@pytest.mark.parametrize(("record", "moderators", "expected"), [
    ({"Committees": CHAIR}, [], [("moderate", "holds a position that moderates the list")]),
    ({"Committees": CHAIR}, [("p@x.org", True, True)], []),                      # already, by this tool
    ({"Committees": CHAIR}, [("p@x.org", True, False)], []),                     # already, by hand
    ({"Committees": [seat(position="Member")]}, [("p@x.org", True, True)],
     [("unmoderate", "no longer holds a position that moderates the list")]),
    ({"Committees": [seat(position="Member")]}, [("p@x.org", True, False)], []),  # a moderator by hand: never
    ({"Committees": [seat(position="Chair", end="2026-11-30T00:00:00Z")]}, [("p@x.org", True, True)],
     [("unmoderate", "no longer holds a position that moderates the list")]),  # the chair's term ended
    ({"Committees": CHAIR, "UnsubscribeFromEmails": True}, [], []),              # off the list: no moderator
    ({"Committees": [seat(position="Member")]}, [("p@x.org", False, True)],
     [("unmoderate", "no longer a moderator in Mailman: not this tool's to track")]),  # removed by hand
    ({"Committees": CHAIR}, [("p@x.org", False, True)], [("moderate", "holds a position that moderates the list")]),
], ids=["chair-made-moderator", "already-made", "already-by-hand", "no-longer-chair", "hand-made-kept",
        "chair-term-ended", "not-eligible", "removed-by-hand-forgotten", "removed-by-hand-still-chair"])
def test_moderators_follow_positions_and_only_those_this_tool_made_are_unmade(record, moderators, expected):
    rules = parse_rules({"lists": [{"list_id": L, "committees": ["Finance"], "moderators_from_positions": ["chair"],
                                    "lapsed": "keep"}]}, "test")
    members = members_frame([novi_record("p", "p@x.org", **record)])
    p = plan_changes(members, {L: roster_frame(L, [("p@x.org", "Pat P")])}, rules, now=NOW,
             moderators={L: moderator_roster(moderators)})
    roles = p.changes.loc[p.changes["action"].isin([Action.MODERATE, Action.UNMODERATE])]
    assert [(r.action, r.reason) for r in roles.itertuples()] == expected
    unmade = roles.loc[roles["action"] == "unmoderate"]
    # the moderator roster's member id, or none for one already gone (apply then makes no call)
    assert unmade["member_id"].tolist() == [f"mod-{m[0]}" if m[1] else pd.NA for m in moderators][:len(unmade)]


def test_moderators_from_positions_needs_committees():
    from tasks.errors import RulesError
    with pytest.raises(RulesError, match="name the committees too"):
        parse_rules({"lists": [{"list_id": L, "moderators_from_positions": ["Chair"]}]}, "test")


# --- issue 27, items 4 and 5: what cannot be read is never a cause of removal --------------

def judged(rule: dict, records: list[dict], on_roster: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Plan one list whose roster holds `on_roster`, each remembered as a member the tool manages
    (they were on it and eligible at the last run): the changes and the rows left alone."""
    from tasks.core.schema import How, Status, empty_ledger

    rules = parse_rules({"lists": [{"list_id": L, "allow_empty": True, "update_names": False, **rule}]}, "test")
    roster = roster_frame(L, [(address, "Pat") for address in on_roster])
    members = members_frame(records)
    ids = dict(zip(members["email"], members["novi_id"]))
    rows = [{"list_id": L, "match_key": a, "email": a, "novi_id": ids.get(a), "status": Status.MEMBER,
             "how": How.SUBSCRIBED, "on_roster": True, "eligible": True,
             "first_managed_at": NOW - pd.Timedelta(days=30), "last_seen_on_roster_at": NOW - pd.Timedelta(days=1),
             "last_eligible_at": NOW - pd.Timedelta(days=1)} for a in on_roster]
    ledger = pd.concat([empty_ledger(), pd.DataFrame(rows)], ignore_index=True) if rows else empty_ledger()
    result = plan_changes(members, {L: roster}, rules, ledger, NOW)
    return result.changes, result.left_alone


CHAIR = {"committees": ["Finance"], "moderators_from_positions": ["Chair"]}


@pytest.mark.parametrize("end", ["06/30/2026", 20260630, "2026-06-31"], ids=["us-format", "integer", "no-such-day"])
def test_an_unreadable_committee_date_quarantines_the_seat_and_says_so(end):
    record = novi_record("p", "p@example.org", Committees=[seat(position="Chair", end=end)])
    changes, alone = judged({"committees": ["Finance"]}, [record], ["p@example.org"])
    assert changes.empty  # not kept on as if the seat were open, and not removed either
    (row,) = alone.to_dict("records")
    assert row["reason"].startswith("quarantined") and ("not a date" in row["reason"] or "cannot be read" in row["reason"])
    # Not subscribed either, on a list it is not on yet
    changes, _ = judged({"committees": ["Finance"]}, [record], [])
    assert changes.empty


def test_an_unreadable_date_is_passed_over_where_another_seat_is_current():
    record = novi_record("p", "p@example.org", Committees=[seat(position="Chair", end="06/30/2026"), seat()])
    assert why({"committees": ["Finance"]}, Committees=record["Committees"]) == ""


def test_a_former_chair_whose_end_date_cannot_be_read_is_neither_kept_nor_unmade_as_moderator():
    from tasks.core.planner import moderator_changes

    rules = parse_rules({"lists": [{"list_id": L, **CHAIR}]}, "test")
    members = members_frame([novi_record("p", "p@example.org", Committees=[seat(position="Chair", end="06/30/2026"),
                                                                          seat(position="Member")])])
    winners = members.assign(eligible=True)
    made = pd.DataFrame({"match_key": ["p@example.org"], "email": ["p@example.org"], "member_id": ["mid-p"],
                         "made": [True]})
    assert moderator_changes(winners, rules.lists[0], NOW, made).empty


@pytest.mark.parametrize(("rule", "record", "says"), [
    ({"committees": ["Finance"]}, {"Committees": {"CommitteeName": "Finance"}}, "Committees cannot be read"),
    ({"committees": ["Finance"]}, {"Committees": [{**seat(), "EndDate": 20270101}]}, "Committees cannot be read"),
    ({"custom_fields": {"Chapter": ["North"]}}, {"CustomFields": field("Chapter", ["North"])},
     "CustomFields.Chapter cannot be read"),
    ({"custom_fields": {"Chapter": ["North"]}}, {"CustomFields": "Chapter=North"}, "CustomFields cannot be read"),
    ({"custom_fields_not": {"Student": ["yes"]}}, {"CustomFields": field("Student", ["yes"])},
     "CustomFields.Student cannot be read"),
    ({"contacts_of_companies": "all"}, {"ParentCustomerUniqueID": 42}, "ParentCustomerUniqueID cannot be read"),
    ({"inheriting": "include"}, {"ParentCustomerUniqueID": ["acme"], "MemberStatus": "inheriting"},
     "ParentCustomerUniqueID cannot be read"),
], ids=["committees-object", "committee-date-integer", "custom-value-list", "custom-fields-string",
        "custom-not-value-list", "parent-id-number", "parent-id-list"])
def test_a_routing_field_of_the_wrong_type_quarantines_the_record_on_the_lists_that_read_it(rule, record, says):
    person = novi_record("p", "p@example.org", **record)
    changes, alone = judged(rule, [person], ["p@example.org"])
    assert changes.empty, changes[["action", "reason"]].to_dict("records")
    (row,) = alone.to_dict("records")
    assert row["reason"].startswith("quarantined") and says in row["reason"]
    # A list whose rule does not read the field judges the record as before.
    changes, alone = judged({}, [person], [])
    assert alone.empty and list(changes["action"]) == ([] if why({}, **record) else [Action.SUBSCRIBE])


@pytest.mark.parametrize("field_name", ["PrimaryContactUniqueId", "BillingContactUniqueId"])
@pytest.mark.parametrize("bad", [12345, ["p1"]], ids=["number", "list"])
def test_a_company_contact_id_of_the_wrong_type_removes_nobody(field_name, bad):
    acme = company("acme", "Acme Ltd", primary="p1", billing="p1")
    acme[field_name] = bad
    changes, alone = judged({"contacts_of_companies": "primary" if field_name.startswith("P") else "billing"},
                            [acme, person("p1")], ["p1@x.org"])
    assert changes.empty
    assert "quarantined" in alone["reason"].iloc[0] and f"{field_name} cannot be read" in alone["reason"].iloc[0]


@pytest.mark.parametrize("value", [True, "Yes", "TRUE"], ids=["boolean", "yes-any-case", "true-text"])
def test_a_checkbox_sent_as_true_or_yes_is_excluded_alike(value):
    assert why({"custom_fields_not": {"Student": ["yes"]}}, CustomFields=field("Student", value)).startswith(
        "custom field Student is")
    assert why({"custom_fields": {"Student": ["true"]}}, CustomFields=field("Student", value)) == ""
    assert why({"custom_fields_not": {"Student": ["yes"]}}, CustomFields=field("Student", False)) == ""


def test_an_unjudged_record_keeps_its_address_also_from_a_record_that_shares_it():
    """A chair whose seat cannot be read shares an address with their company: the company's
    record must not remove the address on the chair's behalf (review of issue 27, item 4)."""
    chair = novi_record("p", "p@example.org", status="non_member", Committees=[seat(position="Chair", start="TBD")])
    acme = company("acme", "Acme Ltd", email="p@example.org")
    changes, alone = judged({"committees": ["Finance"], "statuses": "any"}, [chair, acme], ["p@example.org"])
    assert changes.empty, changes[["action", "reason"]].to_dict("records")
    assert "quarantined" in alone["reason"].iloc[0] and "not a date" in alone["reason"].iloc[0]
