"""Hostile input against a real Mailman core: what the one-member path asks Mailman is exact."""

from __future__ import annotations

import yaml

from flows.member import sync_member
from tests.integration.helpers import lists_for, sync



def test_a_wildcard_address_from_novi_never_matches_other_members(world, tmp_path):
    """Measured on 3.3.10: members/find?subscriber=*@domain returns every member of the domain.
    A Novi record with that address, on a mirror list, must remove nobody."""
    (members,) = lists_for(world, "wild")
    rules = [{"list_id": members, "scope": "mirror"}]
    first, _ = sync(tmp_path, rules)
    assert first.is_completed(), first.message
    world["admin"].add_member(members, f"hand-added@{world['domain']}", "Staff")
    before = world["admin"].roster(members)
    assert len(before) > 20
    record = next(r for r in world["novi"].records() if r["MemberStatus"] == "current" and r["Email"])
    world["novi"].edit(record["UniqueID"], Email=f"*@{world['domain']}", AccountEmail=f"*@{world['domain']}")
    path = tmp_path / "member-rules.yaml"
    path.write_text(yaml.safe_dump({"lists": rules}))
    state = sync_member(member_ids=[record["UniqueID"]], rules_path=str(path), novi_block="it-novi",
                        mailman_block="it-mailman", return_state=True)
    assert state.is_completed(), state.message
    after = world["admin"].roster(members)
    assert set(after) == set(before), sorted(set(before) - set(after))[:5]
