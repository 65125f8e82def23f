"""Lists that have lived for years, on a real Mailman core: what they carry is respected."""

from __future__ import annotations

import re
import time

import pytest

from tests.integration.helpers import expected, lists_for, mail_to, sync, wait_for

pytestmark = [pytest.mark.flow, pytest.mark.integration]


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
        state, writes = sync(tmp_path, [{"list_id": members}])
        assert state.is_completed(), state.message
        assert admin.roster(members) == {a: target[a] for a in rest}
        assert len(writes) == len(rest)  # no subscribe was sent for a banned address
        summary = state.result()
        assert summary["lists"][0]["banned"] == 3
        assert {m["email"].lower() for m in summary["lists"][0]["banned_members"]} == {on_list, everywhere,
                                                                                       by_pattern}
        again, writes = sync(tmp_path, [{"list_id": members}])
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

    state, _ = sync(tmp_path, [{"list_id": members}])
    assert state.is_completed(), state.message
    assert set(admin.roster(members)) == {asked, *rest}
    assert admin.requests(members) == {confirming: "subscriber", stranger: "moderator"}
    item = state.result()["lists"][0]
    assert (item["requests_for_moderator"], item["requests_for_member"]) == (1, 1)
    assert item["left_alone"] == {"their own request waits for their confirmation": 1}
    time.sleep(5)  # let the runners deliver anything the sync caused
    assert asked not in mail_to(core, world["domain"])

    again, writes = sync(tmp_path, [{"list_id": members}])
    assert again.is_completed() and writes == []


def test_owner_moderator_and_nonmember_roles_survive_the_removal_of_lapsed_members(world, tmp_path):
    """A lapsed member who owns or moderates the list loses the member subscription only."""
    admin = world["admin"]
    (members,) = lists_for(world, "roles")
    assert sync(tmp_path, [{"list_id": members}])[0].is_completed()
    records = {r["Email"].lower(): r for r in world["novi"].records() if r["Email"]}
    owner, moderator = sorted(a for a in expected(world["novi"].records()) if a in records)[:2]
    poster = f"poster@{world['domain']}"
    admin.add_role(members, owner, "owner")
    admin.add_role(members, moderator, "moderator")
    admin.add_role(members, poster, "nonmember")
    for address in (owner, moderator):
        world["novi"].edit(records[address]["UniqueID"], MemberStatus="expired")

    state, _ = sync(tmp_path, [{"list_id": members}])
    assert state.is_completed(), state.message
    assert not {owner, moderator} & set(admin.roster(members))  # the member subscriptions went
    assert owner in admin.with_role(members, "owner") and moderator in admin.with_role(members, "moderator")
    assert poster in admin.with_role(members, "nonmember")
    assert state.result()["lists"][0]["changes"]["unsubscribe"] == 2
