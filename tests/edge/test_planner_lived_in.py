"""The planner on lists that have lived: preferences that travel with a member, bounces."""

import pandas as pd

from tasks.core.planner import (
    BOUNCE_DISABLED,
    BOUNCE_REMOVED,
    REASON_BOUNCED,
    REASON_SUBSCRIBE,
    REASON_STOPPED,
)
from tests.conftest import novi_record
from tests.core.test_planner_ledger import T0, T1, alone, changes, rows, step

T2 = pd.Timestamp("2026-11-03T02:15:00Z")
T3 = pd.Timestamp("2026-11-04T02:15:00Z")


def prefs(p, email):
    row = p.changes.loc[(p.changes["action"] == "subscribe") & (p.changes["email"] == email)].iloc[0]
    return row.delivery_mode, row.moderation_action, row.delivery_status


def test_a_new_member_is_subscribed_with_mailmans_defaults():
    p, ledger = step([novi_record("a", "a@x.org")], [])
    assert prefs(p, "a@x.org") == ("regular", "", "enabled")
    assert ledger.iloc[0][["delivery_mode", "moderation_action", "delivery_status"]].tolist() == [
        "regular", "", "enabled"]


def test_an_address_change_keeps_digest_moderation_and_a_delivery_the_member_stopped():
    _, ledger = step([novi_record("x", "old@x.org")], [], now=T0)
    p, after = step([novi_record("x", "new@x.org")],
                    [("old@x.org", "Pat X", "by_user", "mime_digests", "hold")], ledger)
    assert [c[:2] for c in changes(p)] == [("subscribe", "new@x.org"), ("unsubscribe", "old@x.org")]
    assert prefs(p, "new@x.org") == ("mime_digests", "hold", "by_user")
    assert after.set_index("match_key").loc["new@x.org", "delivery_mode"] == "mime_digests"


def test_a_bounce_disabled_delivery_does_not_travel_to_a_new_address():
    _, ledger = step([novi_record("x", "old@x.org")], [], now=T0)
    p, _ = step([novi_record("x", "new@x.org")], [("old@x.org", "Pat X", "by_bounces", "plaintext_digests")], ledger)
    assert prefs(p, "new@x.org") == ("plaintext_digests", "", "enabled")


def test_a_digest_reader_who_lapses_and_renews_gets_the_digest_back():
    _, ledger = step([novi_record("d", "d@x.org")], [("d@x.org", "Dee", False, "mime_digests")], now=T0)
    p, ledger = step([novi_record("d", "d@x.org", status="expired")], [("d@x.org", "Dee", False, "mime_digests")],
                     ledger, now=T1)
    assert [c[:2] for c in changes(p)] == [("unsubscribe", "d@x.org")]
    assert rows(ledger) == {"d@x.org": ("removed", "d", "adopted")}
    p, ledger = step([novi_record("d", "d@x.org", status="expired")], [], ledger, now=T2)
    assert p.changes.empty and rows(ledger) == {"d@x.org": ("removed", "d", "adopted")}
    p, ledger = step([novi_record("d", "d@x.org")], [], ledger, now=T3)
    assert changes(p) == [("subscribe", "d@x.org", REASON_SUBSCRIBE)]
    assert prefs(p, "d@x.org") == ("mime_digests", "", "enabled")
    assert rows(ledger) == {"d@x.org": ("member", "d", "adopted")}


def test_a_renewal_whose_subscribe_fails_keeps_the_preferences_for_the_next_try():
    _, ledger = step([novi_record("d", "d@x.org")], [("d@x.org", "Dee", False, "mime_digests")], now=T0)
    _, ledger = step([novi_record("d", "d@x.org", status="expired")], [("d@x.org", "Dee", False, "mime_digests")],
                     ledger, now=T1)
    _, ledger = step([novi_record("d", "d@x.org")], [], ledger, now=T2, failed={"d@x.org"})
    assert rows(ledger) == {"d@x.org": ("removed", "d", "adopted")}
    p, _ = step([novi_record("d", "d@x.org")], [], ledger, now=T3)
    assert prefs(p, "d@x.org") == ("mime_digests", "", "enabled")


def test_a_lapse_removal_that_fails_stays_a_member_and_a_plain_member_is_not_remembered():
    _, ledger = step([novi_record("d", "d@x.org"), novi_record("p", "p@x.org")],
                     [("d@x.org", "Dee", False, "mime_digests"), ("p@x.org", "Pat")], now=T0)
    lapsed = [novi_record("d", "d@x.org", status="expired"), novi_record("p", "p@x.org", status="expired")]
    _, after = step(lapsed, [("d@x.org", "Dee", False, "mime_digests"), ("p@x.org", "Pat")], ledger,
                    failed={"d@x.org"})
    assert rows(after) == {"d@x.org": ("member", "d", "adopted")}


def test_a_lapsed_member_whose_delivery_is_stopped_is_not_held_over_it():
    roster = [("u@x.org", "U", "by_user"), ("b@x.org", "B", "by_bounces"), ("e@x.org", "E")]
    members = [novi_record(k, f"{k}@x.org") for k in "ube"]
    _, ledger = step(members, roster, now=T0, lapsed="hold")
    p, _ = step([novi_record(k, f"{k}@x.org", status="expired") for k in "ube"], roster, ledger, lapsed="hold")
    assert [c[:2] for c in changes(p)] == [("hold", "e@x.org")]
    assert alone(p) == [("b@x.org", f"{REASON_STOPPED} by bounces: status expired"),
                        ("u@x.org", f"{REASON_STOPPED} by the member: status expired")]


def test_bounce_disabled_members_are_reported_for_staff_with_their_novi_id():
    p, _ = step([novi_record("b", "b@x.org", first="Bo", last="Ng"), novi_record("e", "e@x.org")],
                [("b@x.org", "Bo Ng", "by_bounces"), ("e@x.org", "E"), ("stranger@x.org", "S", "by_bounces")])
    assert p.bouncing[["email", "novi_id", "state"]].values.tolist() == [["b@x.org", "b", BOUNCE_DISABLED]]
    assert p.figures.iloc[0][["bouncing", "bounced"]].tolist() == [2, 0]
    assert set(p.changes["action"]) <= {"rename"}


def test_a_member_mailman_removed_after_bounces_is_not_readded_until_the_address_changes():
    member = [novi_record("b", "b@x.org")]
    _, ledger = step(member, [("b@x.org", "B", "by_bounces")], now=T0, self_unsubscribe="override")
    p, ledger = step(member, [], ledger, now=T1, self_unsubscribe="override")
    assert p.changes.empty
    assert alone(p) == [("b@x.org", REASON_BOUNCED)]
    assert rows(ledger) == {"b@x.org": ("bounced", "b", "adopted")}
    assert p.bouncing[["email", "state"]].values.tolist() == [["b@x.org", BOUNCE_REMOVED]]
    assert p.figures.iloc[0]["bounced"] == 1
    p, ledger = step(member, [], ledger, now=T2, self_unsubscribe="override")
    assert p.changes.empty and rows(ledger) == {"b@x.org": ("bounced", "b", "adopted")}
    p, ledger = step([novi_record("b", "fixed@x.org")], [], ledger, now=T3, self_unsubscribe="override")
    assert changes(p) == [("subscribe", "fixed@x.org", REASON_SUBSCRIBE)]
    assert rows(ledger) == {"fixed@x.org": ("member", "b", "subscribed")}


def test_a_bounced_address_is_forgotten_once_it_is_back_on_the_list():
    member = [novi_record("b", "b@x.org")]
    _, ledger = step(member, [("b@x.org", "B", "by_bounces")], now=T0)
    _, ledger = step(member, [], ledger, now=T1)
    _, ledger = step(member, [("b@x.org", "B")], ledger, now=T2)  # re-added by the list owner
    assert rows(ledger) == {"b@x.org": ("member", "b", "adopted")}


def test_the_plan_asks_for_the_preferences_of_the_members_it_removes_holds_or_moves_only():
    import pandas as pd

    from tasks.core.planner import plan_changes
    from tasks.core.rules import parse_rules
    from tasks.mailman import with_preferences
    from tasks.core.members import members_frame
    from tests.conftest import roster_frame
    from tests.core.test_planner_ledger import L

    _, ledger = step([novi_record(k, f"{k}@x.org") for k in "dms"], [], now=T0)
    members = members_frame([novi_record("d", "d@x.org", status="expired"), novi_record("m", "new@x.org"),
                             novi_record("s", "s@x.org")])
    roster = roster_frame(L, [("d@x.org", "D"), ("m@x.org", "M"), ("s@x.org", "S")])
    roster["delivery_mode"] = pd.NA  # as the roster read leaves it (tasks.mailman.ROSTER_FIELDS)
    rules = parse_rules({"lists": [{"list_id": L}]})
    first = plan_changes(members, {L: roster}, rules, ledger, T1)
    assert sorted(first.wanting["member_id"]) == ["mid-d@x.org", "mid-m@x.org"]  # not the one staying
    read = first.wanting.assign(delivery_mode=["mime_digests", "summary_digests"], delivery_status="enabled")
    second = plan_changes(members, with_preferences({L: roster}, read), rules, ledger, T1)
    assert second.wanting.empty
    assert prefs(second, "new@x.org") == ("summary_digests", "", "enabled")
    # the removal's two possible next rows: still a member if it fails, remembered if it takes
    d = second.memory.loc[second.memory["match_key"] == "d@x.org"]
    assert sorted(d["status"]) == ["member", "removed"] and set(d["delivery_mode"]) == {"mime_digests"}


def test_a_bounced_address_stays_off_through_a_run_whose_record_is_quarantined():
    member = [novi_record("b", "b@x.org")]
    _, ledger = step(member, [("b@x.org", "B", "by_bounces")], now=T0)
    _, ledger = step(member, [], ledger, now=T1)
    _, ledger = step([novi_record("b", "b@x.org", status=None)], [], ledger, now=T2)  # quarantined once
    p, _ = step(member, [], ledger, now=T3)
    assert p.changes.empty and alone(p) == [("b@x.org", REASON_BOUNCED)]


def test_an_address_change_whose_new_subscribe_fails_keeps_the_preferences_for_the_rerun():
    _, ledger = step([novi_record("x", "old@x.org")], [], now=T0)
    moved = [novi_record("x", "new@x.org")]
    _, ledger = step(moved, [("old@x.org", "X", "enabled", "mime_digests", "hold")], ledger, failed={"new@x.org"})
    p, ledger = step(moved, [], ledger, now=T2)
    assert prefs(p, "new@x.org") == ("mime_digests", "hold", "enabled")
    _, ledger = step(moved, [("new@x.org", "X", "enabled", "mime_digests", "hold")], ledger, now=T3)
    assert rows(ledger) == {"new@x.org": ("member", "x", "subscribed")}  # the old row is forgotten


def test_remembered_preferences_go_to_the_member_who_had_them_not_to_the_addresss_new_owner():
    _, ledger = step([novi_record("n1", "x@x.org")], [("x@x.org", "X", "enabled", "mime_digests", "hold")], now=T0)
    _, ledger = step([novi_record("n1", "x@x.org", status="expired")],
                     [("x@x.org", "X", "enabled", "mime_digests", "hold")], ledger, now=T1)
    p, _ = step([novi_record("n1", "y@x.org"), novi_record("n2", "x@x.org")], [], ledger, now=T2)
    assert prefs(p, "y@x.org") == ("mime_digests", "hold", "enabled")
    assert prefs(p, "x@x.org") == ("regular", "", "enabled")
