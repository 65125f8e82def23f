"""Safety guards: reasons not to write, checked on the whole plan before anything is applied.

Pure: the plan, the rules and each list's figures at its last completed run in; the refusals out. When
any list trips a guard, nothing is written to any list; an operator who has checked can lift
the guards for one run (`override_guards`), which never persists.
"""

from __future__ import annotations

from tasks.core.planner import Plan
from tasks.core.rules import Rules
from tasks.core.schema import REMOVING
HOW_TO_OVERRIDE = ("If this is right, rerun once with the guards lifted: `novi-mailman sync --override-guards` "
                   "or, in the Prefect UI, a custom run with override_guards = true.")
HOW_TO_OVERRIDE_FEW = ("If this is right, rerun this member run once with the guards lifted: in the Prefect UI, a "
                       "custom run of it with override_guards = true (or let the full sync make the changes).")


def refusals(plan: Plan, rules: Rules, previous: dict[str, dict] | None, *, few: bool = False) -> list[str]:
    """One sentence per guard that trips, naming the list and the figures; empty when all is well.

    `previous`: list id → that list's figures at its last completed run (`Ledger.last_figures`).
    `few`: the plan covers a few members, not whole lists (a member run): only the guards that
    mean something for a few hold there, the removal count and the roster collapse. An empty
    eligible set, a removal share or an eligible count that fell say nothing about a handful.
    """
    found: list[str] = []
    figures = plan.figures.set_index("list_id")
    previous = previous or {}
    for rule in rules.lists:
        list_id = rule.list_id
        eligible = int(figures.loc[list_id, "eligible"])
        managed = int(figures.loc[list_id, "managed"])
        mine = plan.changes.loc[plan.changes["list_id"] == list_id]
        removals = int(mine["action"].isin(REMOVING).sum())
        if eligible == 0 and not rule.allow_empty and not few:
            found.append(f"{list_id}: no Novi member is eligible. An empty source is treated as an error, not "
                         "as an instruction to empty the list (set `allow_empty: true` if the list really should "
                         "be empty).")
            continue
        if removals > rule.max_removals:
            found.append(f"{list_id}: {removals:,} removals planned, more than max_removals = {rule.max_removals:,}.")
        elif managed and removals > rule.removal_share_from and removals / managed > rule.max_removal_share \
                and not few:
            found.append(f"{list_id}: {removals:,} removals planned, {removals / managed:.0%} of its {managed:,} "
                         f"managed members, more than max_removal_share = {rule.max_removal_share:.0%}.")
        found += roster_collapse(plan, rules, only=list_id)
        before = previous.get(list_id, {}).get("eligible")
        if before and eligible < before * (1 - rule.max_eligible_drop) and not few:
            found.append(f"{list_id}: {eligible:,} members are eligible, down from {before:,} at the last completed "
                         f"run ({1 - eligible / before:.0%} fewer; max_eligible_drop = {rule.max_eligible_drop:.0%}). "
                         "A Novi key scoped to fewer records, or a failed filter, looks like this.")
    return found


def roster_collapse(plan: Plan, rules: Rules, only: str | None = None) -> list[str]:
    """Lists whose roster lost too many of the members the ledger saw on it last time.

    Each such member would be remembered as "left the list themselves" and never re-added: a
    Mailman that answered an empty or partial roster once must not teach the ledger that. A
    list emptied by hand on purpose passes with the guards lifted for one run.
    """
    found = []
    figures = plan.figures.set_index("list_id")
    for rule in rules.lists:
        if only is not None and rule.list_id != only:
            continue
        remembered = int(figures.loc[rule.list_id, "remembered"])
        vanished = int(figures.loc[rule.list_id, "vanished"])
        if vanished > rule.removal_share_from and vanished / remembered > rule.max_roster_drop:
            found.append(f"{rule.list_id}: the roster lacks {vanished:,} of the {remembered:,} members the ledger saw "
                         f"on it at the last run ({vanished / remembered:.0%}; max_roster_drop = "
                         f"{rule.max_roster_drop:.0%}). A Mailman that answered an empty or partial roster looks "
                         "like this; if the list really was emptied by hand, lift the guards for one run.")
    return found


def refusal_message(found: list[str], *, few: bool = False) -> str:
    return ("A safety guard stopped the run before any write; nothing was written to any list. "
            + " ".join(found) + " " + (HOW_TO_OVERRIDE_FEW if few else HOW_TO_OVERRIDE))
