"""The pure planner across every policy, scope and rule option."""

import pandas as pd
import pytest

from tasks.core.members import members_frame
from tasks.core.planner import (
    REASON_AWAITING,
    REASON_REQUEST,
    REASON_BANNED,
    REASON_NOT_IN_NOVI,
    REASON_PROTECTED,
    REASON_RELEASE,
    REASON_RENAME,
    REASON_SUBSCRIBE,
    REASON_UNMANAGED,
    plan_changes,
)
from tasks.core.rules import parse_rules
from tests.conftest import novi_record, roster_frame

L = "members.example.org"


def run(records, roster_rows, **rule):
    rules = parse_rules({"lists": [{"list_id": L, **rule}]})
    return plan_changes(members_frame(records), {L: roster_frame(L, roster_rows)}, rules)


def changes(p):
    return sorted((r.action, r.email, r.reason) for r in p.changes.itertuples())


def alone(p):
    return sorted((r.email, r.reason) for r in p.left_alone.itertuples())


def test_eligible_member_missing_from_the_list_is_subscribed_with_name():
    p = run([novi_record("a", "Ann@Example.org", first="Ann", last="Lee")], [])
    row = p.changes.iloc[0]
    assert (row.action, row.email, row.display_name, row.novi_id, row.reason) == (
        "subscribe", "Ann@Example.org", "Ann Lee", "a", REASON_SUBSCRIBE)


def test_in_step_list_plans_nothing_and_matches_case_insensitively():
    p = run([novi_record("a", "Ann@Example.org", first="Ann", last="Lee")], [("ann@example.org", "Ann Lee")])
    assert p.changes.empty and p.left_alone.empty
    assert p.figures.iloc[0][["eligible", "roster", "managed", "in_step"]].tolist() == [1, 1, 1, 1]


@pytest.mark.parametrize(("record", "reason"), [
    (novi_record("a", "a@x.org", status="expired"), "status expired"),
    (novi_record("a", "a@x.org", status="non_member"), "status non_member"),
    (novi_record("a", "a@x.org", active=False), "inactive in Novi"),
    (novi_record("a", "a@x.org", opted_out=True), "opted out of email in Novi"),
], ids=["expired", "non-member", "inactive", "opted-out"])
def test_lapsed_managed_member_is_unsubscribed_with_the_reason(record, reason):
    p = run([record], [("a@x.org", "Pat A")])
    assert changes(p) == [("unsubscribe", "a@x.org", reason)]


def test_a_member_whose_status_is_null_is_quarantined_not_removed():
    """3 of 20 records with `MemberStatus: null` were unsubscribed as "status missing"."""
    p = run([novi_record("a", "a@x.org", MemberStatus=None)], [("a@x.org", "Pat A")])
    assert p.changes.empty
    assert p.left_alone["reason"].tolist() == ["quarantined in Novi: MemberStatus is empty"]


def test_statuses_are_configurable():
    records = [novi_record("a", "a@x.org", status="inheriting"), novi_record("b", "b@x.org", status="grace_period")]
    assert changes(run(records, [], statuses=["current", "inheriting"])) == [
        ("subscribe", "a@x.org", REASON_SUBSCRIBE)]


def test_active_only_off_lets_inactive_records_in():
    assert changes(run([novi_record("a", "a@x.org", active=False)], [], active_only=False))[0][0] == "subscribe"


def test_opt_out_can_be_ignored_by_rule():
    record = novi_record("a", "a@x.org", opted_out=True)
    assert changes(run([record], [], exclude_opted_out=False))[0][0] == "subscribe"


def test_persons_only_excludes_companies():
    records = [novi_record("p", "p@x.org"), novi_record("c", "c@x.org", person=False)]
    p = run(records, [("c@x.org", "Co")], persons_only=True)
    assert changes(p) == [("subscribe", "p@x.org", REASON_SUBSCRIBE),
                          ("unsubscribe", "c@x.org", "a company, not a person")]


@pytest.mark.parametrize("wanted", [["student"], ["type-student"], ["STUDENT"]], ids=["name", "id", "case"])
def test_member_types_by_name_or_id(wanted):
    records = [novi_record("s", "s@x.org", member_type="Student"), novi_record("r", "r@x.org", member_type="Regular")]
    p = run(records, [("r@x.org", "Pat R")], member_types=wanted)
    assert changes(p) == [("subscribe", "s@x.org", REASON_SUBSCRIBE),
                          ("unsubscribe", "r@x.org", "member type not on this list")]


@pytest.mark.parametrize("wanted", [["board"], ["grp-board"], ["Board", "nobody"]], ids=["name", "id", "any-of"])
def test_groups_by_name_or_id(wanted):
    records = [novi_record("b", "b@x.org", groups=["Staff", "Board"]), novi_record("s", "s@x.org", groups=["Staff"]),
               novi_record("n", "n@x.org")]
    p = run(records, [("s@x.org", "Pat S")], groups=wanted)
    assert changes(p) == [("subscribe", "b@x.org", REASON_SUBSCRIBE),
                          ("unsubscribe", "s@x.org", "in none of the list's groups")]


def test_first_failing_reason_is_given():
    record = novi_record("a", "a@x.org", status="expired", active=False, opted_out=True)
    assert changes(run([record], [("a@x.org", "Pat A")]))[0][2] == "inactive in Novi"


# policies --------------------------------------------------------------------------------

def test_hold_policy_holds_releases_and_leaves_held_alone():
    records = [novi_record("a", "a@x.org", status="expired"), novi_record("b", "b@x.org", status="expired"),
               novi_record("c", "c@x.org")]
    p = run(records, [("a@x.org", "Pat A"), ("b@x.org", "Pat B", True), ("c@x.org", "Pat C", True)], lapsed="hold")
    assert changes(p) == [("hold", "a@x.org", "status expired"), ("release", "c@x.org", REASON_RELEASE)]
    assert alone(p) == [("b@x.org", "already held: status expired")]
    assert p.changes.set_index("email").loc["a@x.org", "member_id"] == "mid-a@x.org"


def test_held_member_is_not_released_on_a_list_that_does_not_hold():
    p = run([novi_record("c", "c@x.org")], [("c@x.org", "Pat C", True)])
    assert p.changes.empty


def test_keep_policy_changes_nothing_and_says_why():
    p = run([novi_record("a", "a@x.org", status="expired")], [("a@x.org", "Pat A")], lapsed="keep")
    assert p.changes.empty
    assert alone(p) == [("a@x.org", "kept (lapsed: keep): status expired")]


# scope and protection --------------------------------------------------------------------

def test_managed_scope_never_touches_addresses_novi_does_not_know():
    p = run([novi_record("a", "a@x.org")], [("a@x.org", "Pat A"), ("staff@x.org", "Staff")])
    assert p.changes.empty
    assert alone(p) == [("staff@x.org", REASON_UNMANAGED)]


def test_mirror_scope_removes_everyone_not_eligible_except_protected():
    p = run([novi_record("a", "a@x.org")], [("a@x.org", "Pat A"), ("staff@x.org", "S"), ("chair@x.org", "C")],
            scope="mirror", protected=["Chair@X.org"])
    assert changes(p) == [("unsubscribe", "staff@x.org", REASON_NOT_IN_NOVI)]
    assert alone(p) == [("chair@x.org", REASON_PROTECTED)]


def test_protected_lapsed_member_stays_in_managed_scope():
    p = run([novi_record("a", "a@x.org", status="expired")], [("a@x.org", "Pat A")], protected=["a@x.org"])
    assert p.changes.empty and alone(p) == [("a@x.org", REASON_PROTECTED)]


# names ---------------------------------------------------------------------------------

def test_changed_name_is_renamed_on_the_roster_address():
    p = run([novi_record("a", "A@X.org", first="Ann", last="Lee")], [("a@x.org", "Ann Smith")])
    assert changes(p) == [("rename", "a@x.org", REASON_RENAME)]
    assert p.changes.iloc[0].display_name == "Ann Lee"
    assert p.figures.iloc[0]["in_step"] == 0


def test_names_left_alone_when_the_rule_says_so_or_novi_has_none():
    assert run([novi_record("a", "a@x.org", first="Ann", last="Lee")], [("a@x.org", "Old")],
               update_names=False).changes.empty
    assert run([novi_record("a", "a@x.org", first=None, last="")], [("a@x.org", "Old")]).changes.empty


def test_a_name_chosen_in_a_mailman_account_is_left_as_it_is_unless_the_rule_corrects_accounts():
    """Issue 32: a member subscribed through their Postorius account shows the account's name;
    the sync renamed the address every night (the roster never changed: 2 writes a night for 2
    such members). Now no change; asked for, one rename of the account, and every other change
    (a lapse) still made."""
    records = [novi_record("a", "nick@x.org", first="Nicholas", last="Lee"),
               novi_record("b", "gone@x.org", status="expired")]

    def roster():
        frame = roster_frame(L, [("nick@x.org", "Nick"), ("gone@x.org", "Gone")])
        return frame.assign(account=pd.Series(["user-nick", "user-gone"], dtype="string"))

    rules = parse_rules({"lists": [{"list_id": L}]})
    p = plan_changes(members_frame(records), {L: roster()}, rules)
    assert changes(p) == [("unsubscribe", "gone@x.org", "status expired")]
    assert p.figures.iloc[0]["in_step"] == 1
    rules = parse_rules({"lists": [{"list_id": L, "update_account_names": True}]})
    asked = plan_changes(members_frame(records), {L: roster()}, rules).changes.set_index("email")
    assert asked.loc["nick@x.org", ["action", "display_name", "previous", "account"]].tolist() == [
        "rename", "Nicholas Lee", "Nick", "user-nick"]


# duplicates and quarantine ---------------------------------------------------------------

@pytest.mark.parametrize("order", [0, 1], ids=["eligible-first", "eligible-last"])
def test_duplicate_address_eligible_record_wins_deterministically(order):
    records = [novi_record("z-old", "dup@x.org", status="expired"), novi_record("a-new", "DUP@x.org")]
    if order:
        records.reverse()
    p = run(records, [])
    assert changes(p) == [("subscribe", "DUP@x.org", REASON_SUBSCRIBE)]
    assert p.changes.iloc[0].novi_id == "a-new"
    assert alone(p) == [("dup@x.org", "duplicate address")]
    assert p.left_alone["detail"].tolist() == ["Novi record a-new is used"]


def test_duplicate_ties_resolve_to_the_smallest_id():
    records = [novi_record("b", "dup@x.org", first="B"), novi_record("a", "dup@x.org", first="A")]
    assert run(records, []).changes.iloc[0].novi_id == "a"


def test_lapsed_duplicate_does_not_remove_an_eligible_member():
    records = [novi_record("old", "dup@x.org", status="expired"), novi_record("new", "dup@x.org")]
    p = run(records, [("dup@x.org", "Pat NEW")])
    assert p.changes.empty


def test_an_address_two_records_share_has_one_name_on_every_list():
    """Issue 27, item 10: a company whose Email is a person's; one list picked the company's
    record, another the person's, and each run renamed the address back and forth (Mailman
    keeps one name per address)."""
    records = [novi_record("a-acme", "ann@x.org", person=False, first=None, last="", Name="Acme Ltd"),
               novi_record("z-ann", "ann@x.org", first="Ann", last="Lee", status="expired")]
    rules = parse_rules({"lists": [{"list_id": L}, {"list_id": "people.x.org", "statuses": "any",
                                                   "persons_only": True}]})
    rosters = {L: roster_frame(L, [("ann@x.org", "Ann Lee")]),
               "people.x.org": roster_frame("people.x.org", [("ann@x.org", "Ann Lee")])}
    p = plan_changes(members_frame(records), rosters, rules)
    assert p.changes.empty, p.changes[["list_id", "action", "display_name"]].to_dict("records")
    moved = {L: roster_frame(L, [("ann@x.org", "Acme Ltd")]),
             "people.x.org": roster_frame("people.x.org", [("ann@x.org", "Acme Ltd")])}
    again = plan_changes(members_frame(records), moved, rules)  # from the company's name, both lists agree on hers
    assert sorted((r.list_id, r.action, r.display_name) for r in again.changes.itertuples()) == [
        (L, "rename", "Ann Lee"), ("people.x.org", "rename", "Ann Lee")]


@pytest.mark.parametrize("scope", ["managed", "mirror"])
def test_quarantined_records_are_never_subscribed_nor_cause_a_removal(scope):
    records = [novi_record("q1", "bad@localhost"), novi_record("q2", "ok@x.org", Active="yes"),
               novi_record("q3", None)]
    p = run(records, [("ok@x.org", "Pat")], scope=scope, allow_empty=True)
    assert p.changes.empty
    assert alone(p) == [("ok@x.org", "quarantined in Novi: Active is not true/false")]
    assert sorted(p.quarantined["novi_id"]) == ["q1", "q2", "q3"]


def test_several_lists_from_one_members_frame():
    members = members_frame([novi_record("a", "a@x.org", groups=["Board"]), novi_record("b", "b@x.org")])
    rules = parse_rules({"lists": [{"list_id": "all@x.org"}, {"list_id": "board@x.org", "groups": ["Board"]}]})
    p = plan_changes(members, {"all.x.org": roster_frame("all.x.org", []),
                       "board.x.org": roster_frame("board.x.org", [("b@x.org", "Pat B")])}, rules)
    got = sorted((r.list_id, r.action, r.email) for r in p.changes.itertuples())
    assert got == [("all.x.org", "subscribe", "a@x.org"), ("all.x.org", "subscribe", "b@x.org"),
                   ("board.x.org", "subscribe", "a@x.org"), ("board.x.org", "unsubscribe", "b@x.org")]
    assert p.figures.set_index("list_id")["eligible"].to_dict() == {"all.x.org": 2, "board.x.org": 1}


def test_empty_inputs_give_empty_frames_with_columns():
    p = run([], [])
    assert p.changes.empty and list(p.changes.columns)[:3] == ["list_id", "action", "email"]
    assert p.figures.iloc[0]["eligible"] == 0


def test_planner_is_pure_and_leaves_its_inputs_alone():
    members = members_frame([novi_record("a", "a@x.org"), novi_record("b", "b@x.org", status="expired")])
    roster = roster_frame(L, [("b@x.org", "Pat B")])
    before = (members.copy(deep=True), roster.copy(deep=True))
    rules = parse_rules({"lists": [{"list_id": L}]})
    first = plan_changes(members, {L: roster}, rules)
    second = plan_changes(members, {L: roster}, rules)
    pd.testing.assert_frame_equal(members, before[0])
    pd.testing.assert_frame_equal(roster, before[1])
    pd.testing.assert_frame_equal(first.changes, second.changes)


# bans (issue 13) --------------------------------------------------------------------------

def banned_run(records, roster_rows, bans, **rule):
    rules = parse_rules({"lists": [{"list_id": L, **rule}]})
    return plan_changes(members_frame(records), {L: roster_frame(L, roster_rows)}, rules, bans={L: bans})


def test_a_banned_eligible_member_is_left_alone_never_subscribed():
    """Mailman answers 400 "Membership is banned" to the subscribe, every run, for ever."""
    records = [novi_record("a", "Ann@X.org"), novi_record("b", "bob@spam.example.org"), novi_record("c", "c@x.org"),
               novi_record("d", "d@x.org")]
    p = banned_run(records, [], ["ann@x.org", r"^.*@spam\.example\.org$"])
    assert changes(p) == [("subscribe", "c@x.org", REASON_SUBSCRIBE), ("subscribe", "d@x.org", REASON_SUBSCRIBE)]
    assert alone(p) == [("Ann@X.org", REASON_BANNED), ("bob@spam.example.org", REASON_BANNED)]
    assert p.figures.iloc[0]["banned"] == 2
    assert set(p.memory["match_key"]) == {"c@x.org", "d@x.org"}  # a banned address is not remembered


def test_a_ban_is_matched_as_mailman_matches_it():
    records = [novi_record("a", "pat@x.org"), novi_record("b", "xpat@x.org"), novi_record("c", "PAT@X.ORG.uk")]
    p = banned_run(records, [], ["^pat@", "^(unclosed"])  # re.match: from the start; a broken pattern is no ban
    assert alone(p) == [("PAT@X.ORG.uk", REASON_BANNED), ("pat@x.org", REASON_BANNED)]
    assert changes(p) == [("subscribe", "xpat@x.org", REASON_SUBSCRIBE)]


def test_a_banned_address_already_on_the_list_stays_and_an_ineligible_one_still_goes():
    records = [novi_record("a", "a@x.org"), novi_record("b", "b@x.org", status="expired")]
    p = banned_run(records, [("a@x.org", "Pat A"), ("b@x.org", "Pat B")], ["a@x.org", "b@x.org"])
    assert changes(p) == [("unsubscribe", "b@x.org", "status expired")]
    assert p.figures.iloc[0]["banned"] == 0 and alone(p) == []


# pending subscription requests (issue 13) -------------------------------------------------

def requested(pending):
    return pd.DataFrame({"match_key": [k for k, _, _ in pending], "token": [t for _, t, _ in pending],
                         "owner": [o for _, _, o in pending]}, dtype="string")


def test_an_eligible_members_request_waiting_for_the_moderator_is_resolved_by_the_subscribe():
    """It answered 409 "Subscription request already pending" every run, for ever."""
    records = [novi_record("a", "Ann@x.org"), novi_record("b", "bob@x.org"), novi_record("c", "cy@x.org", status="expired")]
    rules = parse_rules({"lists": [{"list_id": L}]})
    pending = requested([("ann@x.org", "t-ann", "moderator"), ("bob@x.org", "t-bob", "subscriber"),
                         ("cy@x.org", "t-cy", "moderator"), ("stranger@y.org", "t-s", "moderator")])
    p = plan_changes(members_frame(records), {L: roster_frame(L, [])}, rules, requests={L: pending})
    assert [(r.action, r.email, r.request, r.reason) for r in p.changes.itertuples()] == [
        ("subscribe", "Ann@x.org", "t-ann", REASON_REQUEST)]
    assert alone(p) == [("bob@x.org", REASON_AWAITING)]  # their own confirmation: theirs to answer
    figures = p.figures.iloc[0]
    assert (figures["requests_for_moderator"], figures["requests_for_member"]) == (2, 1)  # cy's and the stranger's


def test_two_quarantined_records_sharing_an_address_on_the_list_leave_it_alone_once():
    """Crashed the plan ("Length of values (2) does not match length of index (1)"): every run failed."""
    p = run([novi_record("q1", "q@x.org", status=None), novi_record("q2", "q@x.org", status=None)],
            [("q@x.org", "Q")])
    assert p.changes.empty
    assert p.left_alone["email"].tolist() == ["q@x.org"]
    assert p.left_alone["reason"].str.startswith("quarantined in Novi: ").all()
