"""Safety guards: reasons not to write, checked on the whole plan before anything is applied.

Pure: the plan, the rules and each list's figures at its last completed run in; the refusals out. When
any list trips a guard, nothing is written to any list. An operator who has reviewed the refused
plan approves exactly that plan by its fingerprint (applied only if a new plan has the same one),
or lifts the guards for one run (`override_guards`); neither persists.
"""

from __future__ import annotations

import hashlib

import pandas as pd

from tasks.core.planner import Plan
from tasks.core.rules import Rules
from tasks.core.schema import FINGERPRINT_LENGTH, PREFERENCE_COLUMNS, REMOVING

# What makes two plans the same plan: the same changes (to the same addresses, for the same
# people, with the same new names, preferences and requests), the same next ledger (who it will
# remember as a member, as having left, as removed: a roster collapse changes that and no
# change row), the same figures the guards judge, and the same rules (welcome and goodbye mail
# among them). Reasons, timestamps and row order are not the plan.
FINGERPRINT_COLUMNS = ["list_id", "action", "match_key", "novi_id", "display_name", "request",
                       *PREFERENCE_COLUMNS]
MEMORY_PRINT_COLUMNS = ["list_id", "match_key", "novi_id", "status"]


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
        found += too_many_removals(rule, removals, managed, few=few)
        found += roster_collapse(plan, rules, only=list_id)
        before = previous.get(list_id, {}).get("eligible")
        if before and eligible < before * (1 - rule.max_eligible_drop) and not few:
            found.append(f"{list_id}: {eligible:,} members are eligible, down from {before:,} at the last completed "
                         f"run ({1 - eligible / before:.0%} fewer; max_eligible_drop = {rule.max_eligible_drop:.0%}). "
                         "A Novi key scoped to fewer records, or a failed filter, looks like this.")
    return found


def too_many_removals(rule, removals: int, managed: int, *, few: bool = False, what: str = "managed members") -> list[str]:
    """The removal guards for one list: a count, and a share of its members."""
    list_id = rule.list_id
    if removals > rule.max_removals:
        return [f"{list_id}: {removals:,} removals planned, more than max_removals = {rule.max_removals:,}."]
    if managed and removals > rule.removal_share_from and removals / managed > rule.max_removal_share and not few:
        return [f"{list_id}: {removals:,} removals planned, {removals / managed:.0%} of its {managed:,} "
                f"{what}, more than max_removal_share = {rule.max_removal_share:.0%}."]
    return []


def undo_refusals(changes: pd.DataFrame, rosters: dict[str, pd.DataFrame], rules: Rules) -> list[str]:
    """An undo's guards: the removal guards, against each list's roster as it is now. An undo
    reads no Novi, so the guards about Novi's side (an empty source, a fall in eligible
    members) have nothing to judge; nor has the roster collapse (the undo reads no ledger memory)."""
    found: list[str] = []
    for rule in rules.lists:
        mine = changes.loc[changes["list_id"] == rule.list_id]
        found += too_many_removals(rule, int(mine["action"].isin(REMOVING).sum()), len(rosters[rule.list_id]),
                                   what="members on the list")
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


def _lines(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    rows = frame.reindex(columns=columns).astype("string").fillna("")
    return sorted("\x1f".join(row) for row in rows.itertuples(index=False, name=None))


def fingerprint(plan: Plan, rules: Rules) -> str:
    """A short hash of what applying the plan would do: the same for the same plan, in any order."""
    figures = plan.figures.sort_values("list_id").astype("string").fillna("")
    parts = [*_lines(plan.changes, FINGERPRINT_COLUMNS), "\x1d", *_lines(plan.memory, MEMORY_PRINT_COLUMNS), "\x1d",
             *("\x1f".join(row) for row in figures.itertuples(index=False, name=None)), "\x1d",
             rules.model_dump_json()]
    return hashlib.sha256("\x1e".join(parts).encode()).hexdigest()[:FINGERPRINT_LENGTH]


def refusal_message(found: list[str], plan_fingerprint: str, proceed: str, *, approved: str | None = None) -> str:
    """The refused run's message: the figures first (a list view shows the start), then what
    proceeds. `approved`: the fingerprint an operator approved, when the plan has moved since."""
    moved = (f"The plan changed since plan {approved} was approved (the data moved); this is plan "
             f"{plan_fingerprint}. " if approved and approved != plan_fingerprint else "")
    return (f"Refused: {' '.join(found)} Nothing was written to any list. {moved}"
            f"To apply exactly this plan (plan {plan_fingerprint}): {proceed}")
