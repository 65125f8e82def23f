"""The inverse of a run, from what the ledger says it applied: pure pandas, no I/O.

An undo puts back, address by address, what that run changed on Mailman: it re-subscribes the
addresses it removed (silently, with the name and preferences they had), removes the ones it
subscribed, releases the holds it made (and holds again what it released), and restores the
names it changed. What has changed since, by a later run of this tool or by someone by hand,
is not the run's to take back: it is skipped, with the reason.
"""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd

from tasks.core.addresses import banned
from tasks.core.schema import CHANGE_COLUMNS, PREFERENCE_COLUMNS, ROLE_ACTIONS, Action, Delivery, missing_as_none

# Each applied change's inverse. An address change is an unsubscribe and a subscribe: each half
# is undone on its own, so the old address comes back and the new one goes.
INVERSE = {Action.SUBSCRIBE: Action.UNSUBSCRIBE, Action.UNSUBSCRIBE: Action.SUBSCRIBE,
           Action.HOLD: Action.RELEASE, Action.RELEASE: Action.HOLD, Action.RENAME: Action.RENAME}
SKIPPED_COLUMNS = ["list_id", "email", "novi_id", "action", "reason"]


class Undo(NamedTuple):
    changes: pd.DataFrame   # CHANGE_COLUMNS: what the undo would apply
    skipped: pd.DataFrame   # SKIPPED_COLUMNS: the run's changes it leaves, and why


def plan_undo(applied: pd.DataFrame, rosters: dict[str, pd.DataFrame], later: pd.DataFrame,
              run_name: str, bans: dict[str, list[str]] | None = None,
              protected: dict[str, set[str]] | None = None) -> Undo:
    """The undo of one run.

    `applied`: the run's changes whose outcome was applied (the ledger's change rows, with
    the name and preferences each address had). `rosters`: each of those lists as Mailman
    holds it now (ROSTER_COLUMNS). `later`: changes this tool applied to the same lists
    after the run (list_id, match_key, run_name): an address a later run changed again is left
    to that run. `bans`: per list, the bans that apply to it now; a banned address is never
    subscribed again (Mailman would refuse it, every time). `protected`: per list, the rules'
    protected addresses, never removed or held, by an undo either."""
    applied = missing_as_none(applied)
    touched_later = dict(zip(zip(later["list_id"], later["match_key"]), later["run_name"]))
    on_roster = {list_id: {row["match_key"]: row for row in missing_as_none(roster).to_dict("records")}
                 for list_id, roster in rosters.items()}
    banned_now = set()
    for list_id, mine in applied.groupby("list_id"):
        if (bans or {}).get(list_id):
            keys = mine["match_key"].astype("string")
            banned_now |= {(list_id, key) for key in keys[banned(keys, bans[list_id]).to_numpy(dtype=bool)]}
    changes, skipped = [], []
    for row in applied.itertuples(index=False):
        if row.action in ROLE_ACTIONS:  # the positions decide who moderates: the next run puts it back
            skipped.append({"list_id": row.list_id, "email": row.email, "novi_id": row.novi_id, "action": row.action,
                            "reason": "moderators follow the committee positions, not undone"})
            continue
        now = on_roster[row.list_id].get(row.match_key)
        inverse = INVERSE[row.action]
        why_not = (_changed_since(row, now, touched_later.get((row.list_id, row.match_key)))
                   or ("banned in Mailman since" if inverse == Action.SUBSCRIBE
                       and (row.list_id, row.match_key) in banned_now else None)
                   or ("protected address" if inverse in (Action.UNSUBSCRIBE, Action.HOLD)
                       and row.match_key in (protected or {}).get(row.list_id, ()) else None))
        if why_not:
            skipped.append({"list_id": row.list_id, "email": row.email, "novi_id": row.novi_id,
                            "action": inverse, "reason": why_not})
            continue
        change = dict.fromkeys(CHANGE_COLUMNS)
        change.update(list_id=row.list_id, action=inverse, email=row.email, match_key=row.match_key,
                      novi_id=row.novi_id, reason=f"undo of {run_name}: {_what(row)}")
        if now is not None:
            change.update(member_id=now["member_id"], previous=now["display_name"], display_name=now["display_name"])
        if inverse == Action.SUBSCRIBE:  # as they were: their name, digest and moderation, no welcome
            change.update(display_name=row.previous, **{c: getattr(row, c) for c in PREFERENCE_COLUMNS})
            if row.delivery_mode is None:  # removed before preferences were read for every removal
                change["reason"] += "; their delivery settings were not recorded: Mailman's defaults"
        elif inverse == Action.RENAME:
            change.update(display_name=row.previous)
        changes.append(change)
    return Undo(pd.DataFrame(changes, columns=CHANGE_COLUMNS).astype("string"),
                pd.DataFrame(skipped, columns=SKIPPED_COLUMNS).astype("string"))


def _what(row) -> str:
    if row.action == Action.RENAME:
        return f"it renamed {row.previous or '(no name)'!r} to {row.display_name or '(no name)'!r}"
    if row.action == Action.UNSUBSCRIBE:
        return f"it removed the address ({row.reason})"
    return {Action.SUBSCRIBE: "it subscribed the address", Action.HOLD: "it held the address",
            Action.RELEASE: "it released the address"}[row.action]


def _changed_since(row, now: dict | None, later_run: str | None) -> str | None:
    """Why a change is no longer the run's to undo, or None."""
    if later_run:
        return f"changed again since, by run {later_run}"
    if row.action == Action.UNSUBSCRIBE and now is not None:
        return "on the list again since (re-added by someone)"
    if row.action != Action.UNSUBSCRIBE and now is None:
        return "no longer on the list (removed since)"
    if row.action == Action.HOLD and now["delivery_status"] != Delivery.BY_MODERATOR:
        return "no longer held (released since)"
    if row.action == Action.RELEASE and now["delivery_status"] == Delivery.BY_MODERATOR:
        return "held again since"
    if row.action == Action.RENAME and (now["display_name"] or "") != (row.display_name or ""):
        return f"renamed since, to {now['display_name'] or '(no name)'!r}"
    return None
