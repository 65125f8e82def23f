"""The safety guards, as a pure function of the plan, the rules and the last completed run."""

import pytest

from tasks.core.guards import fingerprint, refusal_message, refusals
from tasks.core.schema import approved_fingerprint
from tasks.core.members import members_frame
from tasks.core.planner import plan_changes
from tasks.core.rules import parse_rules
from tests.conftest import novi_record, roster_frame

L = "members.example.org"


def planned(n_current: int, n_lapsed: int, roster_all: bool = True, **rule):
    records = [novi_record(f"c{i}", f"c{i}@x.org") for i in range(n_current)]
    records += [novi_record(f"e{i}", f"e{i}@x.org", status="expired") for i in range(n_lapsed)]
    roster = [(r["Email"], f"Pat {r['UniqueID'].upper()}") for r in records] if roster_all else []
    rules = parse_rules({"lists": [{"list_id": L, **rule}]})
    return plan_changes(members_frame(records), {L: roster_frame(L, roster)}, rules), rules


def scenario(n_current: int, n_lapsed: int, roster_all: bool = True, last_eligible: int | None = None, **rule):
    p, rules = planned(n_current, n_lapsed, roster_all, **rule)
    last = {L: {"eligible": last_eligible}} if last_eligible is not None else None
    return refusals(p, rules, last)


def test_ordinary_churn_passes():
    assert scenario(95, 5) == []


def test_new_or_empty_list_is_filled_without_the_removal_guard():
    assert scenario(5000, 0, roster_all=False) == []


def test_removal_count_guard():
    found = scenario(3000, 600)  # 17% of the managed members: only the count trips
    assert len(found) == 1 and "600 removals planned, more than max_removals = 500" in found[0]
    assert scenario(3000, 600, max_removals=1000) == []


def test_removal_share_guard_applies_past_its_floor():
    found = scenario(60, 40)
    assert "40% of its 100 managed members" in found[0]
    assert scenario(6, 4) == []                           # 4 removals: under removal_share_from
    assert scenario(60, 40, max_removal_share=0.5) == []


def test_holds_count_as_removals():
    assert "removals planned" in scenario(60, 40, lapsed="hold")[0]
    assert scenario(60, 40, lapsed="keep") == []


def test_source_collapse_against_the_last_completed_run():
    found = scenario(70, 0, last_eligible=100)
    assert "70 members are eligible, down from 100" in found[0]
    assert scenario(80, 0, last_eligible=100) == []
    assert scenario(70, 0, last_eligible=100, max_eligible_drop=0.5) == []
    assert scenario(70, 0) == []  # no earlier run: nothing to compare with


def test_empty_source_unless_allowed():
    found = scenario(0, 5)
    assert len(found) == 1 and "no Novi member is eligible" in found[0]
    assert scenario(0, 5, allow_empty=True, max_removal_share=1) == []


def test_message_leads_with_the_figures_and_names_the_plan_and_how_to_apply_it():
    message = refusal_message(scenario(3000, 600), "0123456789ab", "`novi-mailman sync --approve 0123456789ab`.")
    assert message.startswith(f"Refused: {L}: 600 removals planned, more than max_removals = 500.")
    assert "Nothing was written to any list" in message
    assert message.endswith("To apply exactly this plan (plan 0123456789ab): `novi-mailman sync --approve 0123456789ab`.")
    assert "changed since" not in message


def test_message_says_when_the_plan_moved_since_it_was_approved():
    message = refusal_message(scenario(3000, 600), "0123456789ab", "…", approved="ffffffffffff")
    assert "The plan changed since plan ffffffffffff was approved (the data moved); this is plan 0123456789ab" in message


def test_a_plans_fingerprint_is_what_applying_it_would_do_in_any_order():
    from dataclasses import replace

    p, rules = planned(50, 10)
    same = fingerprint(p, rules)
    assert len(p.changes) == 10 and len(same) == 12
    shuffled = replace(p, changes=p.changes.iloc[::-1], memory=p.memory.iloc[::-1])
    assert fingerprint(shuffled, rules) == same
    assert fingerprint(replace(p, changes=p.changes.assign(reason="another wording")), rules) == same
    assert fingerprint(replace(p, changes=p.changes.iloc[1:]), rules) != same           # one change fewer
    renamed = p.changes.assign(display_name=p.changes["display_name"].where(p.changes.index != p.changes.index[0], "X"))
    assert fingerprint(replace(p, changes=renamed), rules) != same                      # another new name
    assert fingerprint(replace(p, changes=p.changes.assign(delivery_mode="mime_digests")), rules) != same
    # the next ledger is the plan too: a roster that lost members makes no change row, but the
    # ledger would remember them as having left
    left = p.memory.assign(status=p.memory["status"].where(p.memory.index != p.memory.index[0], "left"))
    assert fingerprint(replace(p, memory=left), rules) != same
    assert fingerprint(replace(p, figures=p.figures.assign(vanished=7)), rules) != same  # the guards' figures
    _, goodbyes = planned(50, 10, send_goodbye=True)
    assert fingerprint(p, goodbyes) != same                                              # the rules: mail


def test_plans_without_changes_do_not_share_a_fingerprint():
    quiet, rules = planned(50, 0)
    other, other_rules = planned(40, 0)
    assert quiet.changes.empty and other.changes.empty
    assert fingerprint(quiet, rules) != fingerprint(other, other_rules)


@pytest.mark.parametrize("given, expected", [(None, None), ("  ", None), ("0123456789AB", "0123456789ab"),
                                             (" 0123456789ab\n", "0123456789ab")], ids=["none", "blank", "upper", "spaces"])
def test_an_approval_names_a_fingerprint(given, expected):
    assert approved_fingerprint(given) == expected


@pytest.mark.parametrize("given", ["0123456789a", "0123456789abc", "0123456789ag", "yes"], ids=["short", "long", "not-hex", "word"])
def test_an_approval_that_is_not_a_fingerprint_is_refused(given):
    with pytest.raises(ValueError, match="12 hex digits"):
        approved_fingerprint(given)


@pytest.mark.parametrize("bad", [{"max_removals": -1}, {"max_removal_share": 1.5}, {"max_eligible_drop": 2}])
def test_guard_settings_are_validated(bad):
    from tasks.errors import RulesError
    with pytest.raises(RulesError):
        parse_rules({"lists": [{"list_id": L, **bad}]})
