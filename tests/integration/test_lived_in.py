"""Lists that have lived for years, on a real Mailman core: what they carry is respected."""

from __future__ import annotations

import re

import pytest

from tests.integration.helpers import expected, lists_for, sync

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
