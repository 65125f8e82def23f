"""The planner with the ledger as one more input: adoption, address changes, people who left."""

import pandas as pd
import pytest

from tasks.core.members import members_frame
from tasks.core.planner import REASON_ADDRESS_CHANGED, REASON_GONE, REASON_LEFT, REASON_SUBSCRIBE, plan_changes, settle
from tasks.core.rules import parse_rules
from tests.conftest import novi_record, roster_frame

L = "members.example.org"
T0 = pd.Timestamp("2026-11-01T02:15:00Z")
T1 = pd.Timestamp("2026-11-02T02:15:00Z")


def step(records, roster_rows, ledger=None, now=T1, failed=(), **rule):
    """Plan one run, apply every change except `failed` addresses, and settle the ledger."""
    rules = parse_rules({"lists": [{"list_id": L, **rule}]})
    p = plan_changes(members_frame(records), {L: roster_frame(L, roster_rows)}, rules, ledger, now)
    outcomes = p.changes.assign(outcome=["failed" if e in failed else "applied" for e in p.changes["email"]])
    return p, settle(p.memory, outcomes)


def changes(p):
    return sorted((r.action, r.email, r.reason) for r in p.changes.itertuples())


def alone(p):
    return sorted((r.email, r.reason) for r in p.left_alone.itertuples())


def rows(ledger):
    return {r.match_key: (r.status, r.novi_id, r.how) for r in ledger.itertuples()}


def test_first_run_adopts_known_roster_addresses_without_writing():
    p, ledger = step([novi_record("a", "a@x.org"), novi_record("b", "b@x.org", status="expired")],
                     [("a@x.org", "Pat A"), ("staff@x.org", "Staff")])
    assert p.changes.empty
    assert rows(ledger) == {"a@x.org": ("member", "a", "adopted")}
    row = ledger.iloc[0]
    assert row.first_managed_at == T1 and row.last_seen_on_roster_at == T1 and bool(row.on_roster)


def test_subscribed_addresses_are_recorded_as_subscribed():
    _, ledger = step([novi_record("a", "A@x.org")], [])
    assert rows(ledger) == {"a@x.org": ("member", "a", "subscribed")}
    assert ledger.iloc[0].email == "A@x.org"


def test_address_change_removes_the_old_address_and_subscribes_the_new():
    _, ledger = step([novi_record("x", "old@x.org")], [], now=T0)
    p, after = step([novi_record("x", "new@x.org")], [("old@x.org", "Pat X")], ledger)
    assert changes(p) == [("subscribe", "new@x.org", REASON_SUBSCRIBE),
                          ("unsubscribe", "old@x.org", REASON_ADDRESS_CHANGED)]
    assert rows(after) == {"new@x.org": ("member", "x", "subscribed")}
    assert after.iloc[0].first_managed_at == T1


@pytest.mark.parametrize("lapsed", ["hold", "keep"])
def test_address_change_removes_the_old_address_whatever_the_lapse_policy(lapsed):
    _, ledger = step([novi_record("x", "old@x.org")], [], now=T0)
    p, _ = step([novi_record("x", "new@x.org")], [("old@x.org", "Pat X")], ledger, lapsed=lapsed)
    assert ("unsubscribe", "old@x.org", REASON_ADDRESS_CHANGED) in changes(p)


def test_protected_old_address_is_not_removed():
    _, ledger = step([novi_record("x", "old@x.org")], [], now=T0)
    p, _ = step([novi_record("x", "new@x.org")], [("old@x.org", "Pat X")], ledger, protected=["old@x.org"])
    assert changes(p) == [("subscribe", "new@x.org", REASON_SUBSCRIBE)]


def test_without_the_ledger_an_old_address_is_unmanaged():
    p, _ = step([novi_record("x", "new@x.org")], [("old@x.org", "Pat X")])
    assert changes(p) == [("subscribe", "new@x.org", REASON_SUBSCRIBE)]
    assert alone(p) == [("old@x.org", "unmanaged: not in Novi")]


def test_ledger_makes_an_address_managed_after_its_record_leaves_novi():
    _, ledger = step([novi_record("y", "gone@x.org"), novi_record("a", "a@x.org")], [], now=T0)
    p, after = step([novi_record("a", "a@x.org")], [("gone@x.org", "G"), ("a@x.org", "Pat A")], ledger)
    assert changes(p) == [("unsubscribe", "gone@x.org", REASON_GONE)]
    assert set(rows(after)) == {"a@x.org"}


def left_ledger(**rule):
    """Ledger after a@ was subscribed and then seen on the roster, eligible."""
    _, ledger = step([novi_record("a", "a@x.org")], [("a@x.org", "Pat A")], now=T0, **rule)
    return ledger


def test_member_who_left_themselves_is_not_re_added_and_is_remembered():
    p, after = step([novi_record("a", "a@x.org")], [], left_ledger())
    assert p.changes.empty
    assert alone(p) == [("a@x.org", REASON_LEFT)]
    assert rows(after) == {"a@x.org": ("left", "a", "adopted")}
    assert after.iloc[0].left_at == T1 and not bool(after.iloc[0].on_roster)
    # and on every later run
    later, again = step([novi_record("a", "a@x.org")], [], after, now=T1 + pd.Timedelta(days=1))
    assert later.changes.empty and rows(again) == rows(after)
    assert again.iloc[0].left_at == T1


def test_left_member_with_a_new_address_is_not_subscribed_either():
    _, left = step([novi_record("a", "a@x.org")], [], left_ledger())
    p, _ = step([novi_record("a", "new@x.org")], [], left, now=T1 + pd.Timedelta(days=1))
    assert p.changes.empty and alone(p) == [("new@x.org", REASON_LEFT)]


def test_until_renewal_plans_a_first_run_with_nobody_remembered_as_left():
    """A list with `self_unsubscribe: until_renewal` crashed the planner on every run where the
    ledger remembered nobody who left (its first run included): the list could never sync."""
    p, after = step([novi_record("a", "a@x.org"), novi_record("b", "b@x.org")], [("b@x.org", "Pat B")],
                    self_unsubscribe="until_renewal")
    assert changes(p) == [("subscribe", "a@x.org", REASON_SUBSCRIBE)]
    assert rows(after) == {"a@x.org": ("member", "a", "subscribed"), "b@x.org": ("member", "b", "adopted")}


def test_until_renewal_re_adds_after_the_expiry_moves_on():
    _, left = step([novi_record("a", "a@x.org")], [], left_ledger(), self_unsubscribe="until_renewal")
    same, _ = step([novi_record("a", "a@x.org")], [], left, self_unsubscribe="until_renewal")
    assert same.changes.empty
    renewed = novi_record("a", "a@x.org", MembershipExpires="2028-06-30T00:00:00")
    p, after = step([renewed], [], left, self_unsubscribe="until_renewal")
    assert changes(p) == [("subscribe", "a@x.org", REASON_SUBSCRIBE)]
    assert rows(after)["a@x.org"][0] == "member"


def test_override_re_adds_on_compulsory_lists():
    p, _ = step([novi_record("a", "a@x.org")], [], left_ledger(), self_unsubscribe="override")
    assert changes(p) == [("subscribe", "a@x.org", REASON_SUBSCRIBE)]


def test_member_who_comes_back_by_themselves_is_a_member_again():
    _, left = step([novi_record("a", "a@x.org")], [], left_ledger())
    p, after = step([novi_record("a", "a@x.org")], [("a@x.org", "Pat A")], left)
    assert p.changes.empty and rows(after)["a@x.org"][0] == "member"


def test_a_removal_the_ledger_missed_is_not_taken_for_leaving():
    # The run that removed a lapsed member died before it wrote the ledger: the member is
    # gone from the roster and not eligible, so the row is forgotten, not marked "left".
    p, after = step([novi_record("a", "a@x.org", status="expired")], [], left_ledger())
    assert p.changes.empty and after.empty
    renewed, _ = step([novi_record("a", "a@x.org")], [], after)
    assert changes(renewed) == [("subscribe", "a@x.org", REASON_SUBSCRIBE)]


def test_a_subscribe_that_did_not_take_is_not_remembered():
    p, ledger = step([novi_record("a", "a@x.org"), novi_record("b", "b@x.org")], [], failed={"b@x.org"})
    assert set(rows(ledger)) == {"a@x.org"}
    # so the next run tries again rather than taking b for someone who left
    again, _ = step([novi_record("a", "a@x.org"), novi_record("b", "b@x.org")], [("a@x.org", "Pat A")], ledger)
    assert changes(again) == [("subscribe", "b@x.org", REASON_SUBSCRIBE)]


def test_a_removal_that_failed_stays_a_member():
    _, ledger = step([novi_record("a", "a@x.org")], [], now=T0)
    p, after = step([novi_record("a", "a@x.org", status="expired")], [("a@x.org", "Pat A")], ledger,
                    failed={"a@x.org"})
    assert changes(p) == [("unsubscribe", "a@x.org", "status expired")]
    assert rows(after) == {"a@x.org": ("member", "a", "subscribed")}


def test_an_old_address_tied_to_a_quarantined_record_is_left_alone():
    _, ledger = step([novi_record("x", "old@x.org")], [], now=T0)
    p, after = step([novi_record("x", "broken@localhost")], [("old@x.org", "Pat X")], ledger, allow_empty=True)
    assert p.changes.empty
    assert alone(p) == [("old@x.org", "quarantined in Novi: domain without a dot")]
    assert set(rows(after)) == {"old@x.org"}  # still remembered
