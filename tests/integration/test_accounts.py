"""Memberships as Postorius makes them (issue 32): held through a member's account, showing the
name the member chose there. On a real core, the current one and the oldest supported."""

from __future__ import annotations

import pytest

from tests.integration.conftest import EACH_CORE
from tests.integration.helpers import expected, lists_for, sync

pytestmark = pytest.mark.parametrize("core_under_test", EACH_CORE, indirect=True)


def test_account_names_stay_and_lapses_address_changes_and_preferences_still_work(world, tmp_path):
    """Measured before: a no-change run sent one PATCH /addresses a night for each such member
    (the roster shows the account's name, which that PATCH never changes)."""
    (members,) = lists_for(world, "accounts")
    admin, novi = world["admin"], world["novi"]
    records = novi.records()
    target = expected(records)
    nick, mover, lapser, *rest = sorted(target)
    uid_of = {r["Email"].lower(): r["UniqueID"] for r in records if r["Email"]}
    accounts = {a: admin.subscribe_account(members, a, f"Nickname {i}") for i, a in enumerate((nick, mover, lapser))}
    admin.set_preferences(members, mover, delivery_mode="mime_digests")

    def run(**rule):
        return sync(tmp_path, [{"list_id": members, **rule}], mailman_block=world["mailman_block"])

    state, writes = run()
    assert state.is_completed(), state.message
    assert not [w for w in writes if w[0] == "PATCH"]  # no name written for an account
    assert len(writes) == len(rest)                       # the others subscribed, in batches of one call each
    roster = admin.roster(members)
    assert [roster[a] for a in (nick, mover, lapser)] == ["Nickname 0", "Nickname 1", "Nickname 2"]
    again, writes = run()
    assert again.is_completed() and writes == []          # a no-change night writes nothing

    novi.edit(uid_of[lapser], MemberStatus="expired")
    moved_to = f"moved-{world['tag']}@{world['domain']}"
    novi.edit(uid_of[mover], Email=moved_to)
    state, writes = run()
    assert state.is_completed(), state.message
    roster = admin.roster(members)
    assert lapser not in roster and mover not in roster and moved_to in roster  # user-held ones removed
    assert admin.settings(members, moved_to)[0] == "mime_digests"               # the digest went along

    state, writes = run(update_account_names=True)  # asked: the account's name, once
    assert state.is_completed(), state.message
    assert writes == [("PATCH", f"{admin.base}/users/{accounts[nick]}")]
    assert admin.roster(members)[nick] == target[nick]
    again, writes = run(update_account_names=True)
    assert again.is_completed() and writes == []
