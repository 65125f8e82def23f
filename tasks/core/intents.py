"""What a run that died mid-apply did, decided from the roster: pure pandas, no I/O.

Before a batch goes to Mailman the run writes its changes to the ledger as intents
(tasks.ledger); a run that ends removes its own with the rest of its record. Intents still there
when a run takes a list's lock are a dead run's: whether each change reached Mailman is read off
the roster the new run has just read, never guessed.
"""

from __future__ import annotations

import pandas as pd

from tasks.core.schema import Action, Delivery, Outcome, missing_as_none

# Whether an intent's change holds on Mailman: as a change's outcome says it, or not (yet) told.
APPLIED, NOT_APPLIED, UNDECIDED = Outcome.APPLIED, "not applied", "undecided"
# What the ledger keeps of each intent (tasks.ledger.intents_table), the change it was.
INTENT_COLUMNS = ["intent_id", "run_id", "run_name", "kind", "lease", "started_at", "at", "list_id", "action",
                  "email", "match_key", "novi_id", "display_name", "previous", "reason", "delivery_mode",
                  "moderation_action", "delivery_status"]


def settle_intents(intents: pd.DataFrame, rosters: dict[str, pd.DataFrame],
                   moderators: dict[str, pd.DataFrame] | None = None) -> pd.Series:
    """Per intent (INTENT_COLUMNS), whether its change holds on Mailman now: APPLIED,
    NOT_APPLIED, or UNDECIDED where what would tell was not read (a list's roster, or its
    moderators for a moderator change).

    `rosters`: per list, the roster as read (ROSTER_COLUMNS) by the run that settles; with a
    member run's reads, only the addresses it asked for, which include every intent's.
    `moderators`: per list, its moderators (a `match_key` column)."""
    moderators = moderators or {}
    verdicts = []
    for intent in missing_as_none(intents).to_dict("records"):
        roster = rosters.get(intent["list_id"])
        if intent["action"] in (Action.MODERATE, Action.UNMODERATE):
            mods = moderators.get(intent["list_id"])
            if mods is None:
                verdicts.append(UNDECIDED)
                continue
            moderating = intent["match_key"] in set(mods["match_key"])
            verdicts.append(APPLIED if moderating == (intent["action"] == Action.MODERATE) else NOT_APPLIED)
            continue
        if roster is None:
            verdicts.append(UNDECIDED)
            continue
        row = roster.loc[roster["match_key"] == intent["match_key"]]
        on = not row.empty
        now = missing_as_none(row).iloc[0].to_dict() if on else {}
        held = on and now.get("delivery_status") == Delivery.BY_MODERATOR
        holds = {
            Action.SUBSCRIBE: on,
            Action.UNSUBSCRIBE: not on,
            Action.HOLD: held,
            Action.RELEASE: on and not held,
            Action.RENAME: on and (now.get("display_name") or "") == (intent["display_name"] or ""),
        }.get(intent["action"])
        verdicts.append(UNDECIDED if holds is None else APPLIED if holds else NOT_APPLIED)
    return pd.Series(verdicts, index=intents.index, dtype="string")
