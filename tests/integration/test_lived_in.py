"""Lists that have lived for years, on a real Mailman core: what they carry is respected."""

from __future__ import annotations

import re
import time

import pytest

from tests.integration.conftest import EACH_CORE
from tests.integration.helpers import expected, lists_for, mail_to, sync, wait_for

# Every state a lived-in list carries, on the current core and on the oldest supported one.
pytestmark = pytest.mark.parametrize("core_under_test", EACH_CORE, indirect=True)


def run(world, tmp_path, lists, **params):
    return sync(tmp_path, lists, mailman_block=world["mailman_block"], **params)


def test_banned_eligible_members_never_fail_a_run_and_the_second_run_writes_nothing(world, tmp_path):
    """Measured on 3.3.10: one banned eligible member failed every run ("1 of 136 changes
    failed; rerun to retry them"). A ban on the list, a global ban and a `^` pattern."""
    (members,) = lists_for(world, "banned")
    target = expected(world["novi"].records())
    on_list, everywhere, by_pattern, *rest = sorted(target)
    admin = world["admin"]
    admin.ban(on_list, members)
    admin.ban(everywhere)
    pattern = "^" + re.escape(by_pattern.partition("@")[0]) + "@"
    admin.ban(pattern, members)
    try:
        state, writes = run(world, tmp_path, [{"list_id": members}])
        assert state.is_completed(), state.message
        assert admin.roster(members) == {a: target[a] for a in rest}
        assert len(writes) == len(rest)  # no subscribe was sent for a banned address
        summary = state.result()
        assert summary["lists"][0]["banned"] == 3
        assert {m["email"].lower() for m in summary["lists"][0]["banned_members"]} == {on_list, everywhere,
                                                                                       by_pattern}
        again, writes = run(world, tmp_path, [{"list_id": members}])
        assert again.is_completed(), again.message
        assert writes == []
    finally:
        admin.unban(everywhere)  # a global ban outlives the test's list


def test_an_eligible_members_pending_request_is_resolved_silently_and_others_stay(world, tmp_path):
    """On a moderated list the subscribe answered 409 "Subscription request already pending"
    and the run tried again every night. Novi already says this person belongs."""
    admin, core = world["admin"], world["core"]
    members = admin.recreate_list(f"moderated-{world['tag']}@example.org", subscription_policy="moderate")
    target = expected(world["novi"].records())
    asked, confirming, *rest = sorted(target)
    stranger = f"stranger@{world['domain']}"
    core.clear_messages()
    admin.ask_to_join(members, asked)
    admin.ask_to_join(members, confirming, confirmed=False)
    admin.ask_to_join(members, stranger)
    # the mail runners work: the one who must confirm was asked to (so no mail below means none sent)
    assert wait_for(lambda: confirming in mail_to(core, world["domain"])), "no confirmation mail arrived"
    core.clear_messages()

    state, _ = run(world, tmp_path, [{"list_id": members}])
    assert state.is_completed(), state.message
    assert set(admin.roster(members)) == {asked, *rest}
    assert admin.requests(members) == {confirming: "subscriber", stranger: "moderator"}
    item = state.result()["lists"][0]
    assert (item["requests_for_moderator"], item["requests_for_member"]) == (1, 1)
    assert item["left_alone"].get("their own request waits for their confirmation") == 1
    time.sleep(5)  # let the runners deliver anything the sync caused
    assert asked not in mail_to(core, world["domain"])

    again, writes = run(world, tmp_path, [{"list_id": members}])
    assert again.is_completed() and writes == []


def test_owner_moderator_and_nonmember_roles_survive_the_removal_of_lapsed_members(world, tmp_path):
    """A lapsed member who owns or moderates the list loses the member subscription only."""
    admin = world["admin"]
    (members,) = lists_for(world, "roles")
    assert run(world, tmp_path, [{"list_id": members}])[0].is_completed()
    records = {r["Email"].lower(): r for r in world["novi"].records() if r["Email"]}
    owner, moderator = sorted(a for a in expected(world["novi"].records()) if a in records)[:2]
    poster = f"poster@{world['domain']}"
    admin.add_role(members, owner, "owner")
    admin.add_role(members, moderator, "moderator")
    admin.add_role(members, poster, "nonmember")
    for address in (owner, moderator):
        world["novi"].edit(records[address]["UniqueID"], MemberStatus="expired")

    state, _ = run(world, tmp_path, [{"list_id": members}])
    assert state.is_completed(), state.message
    assert not {owner, moderator} & set(admin.roster(members))  # the member subscriptions went
    assert owner in admin.with_role(members, "owner") and moderator in admin.with_role(members, "moderator")
    assert poster in admin.with_role(members, "nonmember")
    assert state.result()["lists"][0]["changes"]["unsubscribe"] == 2


def _with_address(records: list[dict], count: int) -> list[dict]:
    """`count` eligible records whose own Email is the address on the list (so editing it moves them)."""
    target = expected(records)
    return [r for r in sorted(records, key=lambda r: r["UniqueID"])
            if (r["Email"] or "").strip().lower() in target and " " not in r["Email"].strip()][:count]


def test_preferences_travel_with_an_address_change_and_come_back_with_a_renewal(world, tmp_path):
    """A digest reader or a moderated poster who changed address in Novi was subscribed again
    as a plain member; a digest reader who lapsed and renewed came back regular."""
    admin, novi = world["admin"], world["novi"]
    (members,) = lists_for(world, "prefs")
    assert run(world, tmp_path, [{"list_id": members}])[0].is_completed()
    reader, poster, quiet, lapser = _with_address(novi.records(), 4)
    address = {r["UniqueID"]: r["Email"].strip().lower() for r in (reader, poster, quiet, lapser)}
    admin.set_preferences(members, address[reader["UniqueID"]], delivery_mode="mime_digests")
    admin.set_preferences(members, address[poster["UniqueID"]], moderation_action="hold")
    admin.set_preferences(members, address[quiet["UniqueID"]], delivery_status="by_user")
    admin.set_preferences(members, address[lapser["UniqueID"]], delivery_mode="plaintext_digests")
    moved = {}
    for number, record in enumerate((reader, poster, quiet)):
        moved[record["UniqueID"]] = f"moved-{number}@{world['domain']}"
        novi.edit(record["UniqueID"], Email=moved[record["UniqueID"]])
    novi.edit(lapser["UniqueID"], MemberStatus="expired", MembershipExpires="2026-10-31T00:00:00")

    state, _ = run(world, tmp_path, [{"list_id": members}])
    assert state.is_completed(), state.message
    roster = admin.roster(members)
    assert not {address[r["UniqueID"]] for r in (reader, poster, quiet, lapser)} & set(roster)
    assert admin.settings(members, moved[reader["UniqueID"]]) == ("mime_digests", "", "enabled")
    assert admin.settings(members, moved[poster["UniqueID"]]) == ("regular", "hold", "enabled")
    assert admin.settings(members, moved[quiet["UniqueID"]]) == ("regular", "", "by_user")

    novi.edit(lapser["UniqueID"], MemberStatus="current", MembershipExpires="2027-11-30T00:00:00")
    state, _ = run(world, tmp_path, [{"list_id": members}])
    assert state.is_completed(), state.message
    assert admin.settings(members, address[lapser["UniqueID"]]) == ("plaintext_digests", "", "enabled")
    again, writes = run(world, tmp_path, [{"list_id": members}])
    assert again.is_completed() and writes == []


def test_bouncing_members_are_left_alone_reported_and_not_readded_once_mailman_removed_them(world, tmp_path):
    """Mailman disables a bouncing address and later removes it; the tool recorded that as
    "left the list themselves", and nobody learnt that the address in Novi is probably wrong."""
    admin, novi = world["admin"], world["novi"]
    (members,) = lists_for(world, "bounces")
    rules = [{"list_id": members, "lapsed": "hold", "self_unsubscribe": "override"}]
    assert run(world, tmp_path, rules)[0].is_completed()
    stays, lapses = _with_address(novi.records(), 2)
    stays_at, lapses_at = stays["Email"].strip().lower(), lapses["Email"].strip().lower()
    for address in (stays_at, lapses_at):
        admin.set_preferences(members, address, delivery_status="by_bounces")
    novi.edit(lapses["UniqueID"], MemberStatus="expired", MembershipExpires="2026-10-31T00:00:00")

    state, writes = run(world, tmp_path, rules)
    assert state.is_completed(), state.message
    assert writes == []  # the lapsed bouncer is not held over Mailman's bounce state
    assert admin.settings(members, lapses_at)[2] == "by_bounces"
    summary = state.result()
    assert summary["lists"][0]["bouncing"] == 2 and summary["bouncing"] == {"delivery disabled by bounces": 2}

    admin.remove(members, stays_at)  # Mailman's removal after its warnings
    state, writes = run(world, tmp_path, rules)
    assert state.is_completed(), state.message
    assert writes == [] and stays_at not in admin.roster(members)
    summary = state.result()
    assert summary["lists"][0]["left_alone"].get("removed by Mailman after bounces: correct the address in Novi") == 1
    assert summary["bouncing"] == {"delivery disabled by bounces": 1, "removed by Mailman after bounces": 1}

    fixed = f"fixed@{world['domain']}"
    novi.edit(stays["UniqueID"], Email=fixed)
    state, _ = run(world, tmp_path, rules)
    assert state.is_completed(), state.message
    assert admin.settings(members, fixed) == ("regular", "", "enabled")
