"""A committee list and a chapter list on a real core, following the sandbox through a day of
churn: a term ends, people move chapter, members lapse."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from tests.integration.helpers import expected, lists_for, sync

pytestmark = pytest.mark.integration


def seated(records: list[dict], committees: set[str]) -> dict[str, str]:
    """Who holds a current seat on these committees (address → name), worked out here, apart
    from the planner: any status, active records, a usable address."""
    now = datetime.now(timezone.utc)

    def current(seat: dict) -> bool:
        start = datetime.fromisoformat(seat["StartDate"]) if seat["StartDate"] else None
        end = datetime.fromisoformat(seat["EndDate"]) if seat["EndDate"] else None
        return seat["CommitteeName"] in committees and (not start or start <= now) and (not end or now < end)

    holders = [r for r in records if any(current(seat) for seat in r.get("Committees") or [])]
    return expected(holders, statuses=tuple({r["MemberStatus"] for r in records}))


def in_chapter(records: list[dict], chapter: str) -> dict[str, str]:
    return expected([r for r in records if ((r.get("CustomFields") or {}).get("Chapter") or {}).get("Value") == chapter])


def test_a_committee_list_and_a_chapter_list_follow_a_day_of_churn(world, tmp_path):
    admin, novi = world["admin"], world["novi"]
    committee, chapter = lists_for(world, "committees", "north")
    rules = [{"list_id": committee, "committees": ["Finance Committee", "Events Committee"], "statuses": "any"},
             {"list_id": chapter, "custom_fields": {"Chapter": ["North"]}}]
    first, _ = sync(tmp_path, rules, mailman_block=world["mailman_block"])
    assert first.is_completed(), first.message
    records = novi.records()
    assert admin.roster(committee) == seated(records, {"Finance Committee", "Events Committee"})
    assert admin.roster(chapter) == in_chapter(records, "North")
    assert admin.roster(committee) and admin.roster(chapter)

    done = novi.churn(end_term=2, change_chapter=6, lapse=4)
    assert len(done["end_term"]) == 2 and len(done["change_chapter"]) == 6
    day, _ = sync(tmp_path, rules, mailman_block=world["mailman_block"])
    assert day.is_completed(), day.message
    records = novi.records()
    assert admin.roster(committee) == seated(records, {"Finance Committee", "Events Committee"})
    assert admin.roster(chapter) == in_chapter(records, "North")
