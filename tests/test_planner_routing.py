"""Routing the way associations organise people: committee seats with terms and positions, and
custom fields. Tables with readable ids; `NOW` is the run's clock."""

from __future__ import annotations

import pandas as pd
import pytest

from tasks.core.planner import COMMITTEE_TERM_ENDED, ineligibility, plan, unknown_custom_fields
from tasks.core.rules import parse_rules
from tasks.core.schema import Action
from tasks.novi import members_frame
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
    the_plan = plan(members_frame(records), {L: roster}, rules, now=NOW)
    got = sorted((r.action, r.email, r.reason) for r in the_plan.changes.itertuples())
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
    with pytest.raises(Exception, match="positions narrow committees"):
        parse_rules({"lists": [{"list_id": L, "positions": ["Chair"]}]}, "test")
