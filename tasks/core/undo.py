"""The inverse of a run, from what the ledger says it applied: pure pandas, no I/O.

An undo puts back, address by address, what that run changed on Mailman: it re-subscribes the
addresses it removed (silently, with the name and preferences they had), removes the ones it
subscribed, releases the holds it made (and holds again what it released), and restores the
names it changed. What has changed since, by a later run of this tool or by someone by hand,
is not the run's to take back: it is skipped, with the reason.

Whoever an undo would give the list's mail again (a re-subscribe, a release) is judged by
Novi as it is now: a removal that was their own choice (they opted out), a record Novi no
longer has, an address it no longer gives them, an opt-out or a deactivation since: each is
left as it is and said. What it does put back is managed (tasks.ledger records it with the
member's Novi id), so the next sync still moves or removes it as Novi says.
"""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd

from tasks.core.addresses import banned
from tasks.core.rules import ListRule, Rules
from tasks.core.schema import (CHANGE_COLUMNS, PREFERENCE_COLUMNS, REASON_OPTED_OUT, ROLE_ACTIONS, Action, Delivery,
                               missing_as_none)

# Each applied change's inverse. An address change is an unsubscribe and a subscribe: each half
# is undone on its own, so the old address comes back and the new one goes.
INVERSE = {Action.SUBSCRIBE: Action.UNSUBSCRIBE, Action.UNSUBSCRIBE: Action.SUBSCRIBE,
           Action.HOLD: Action.RELEASE, Action.RELEASE: Action.HOLD, Action.RENAME: Action.RENAME}
SKIPPED_COLUMNS = ["list_id", "email", "novi_id", "action", "reason"]
PUTTING_BACK = (Action.SUBSCRIBE, Action.RELEASE)  # inverses that give someone the list's mail again


class Undo(NamedTuple):
    changes: pd.DataFrame   # CHANGE_COLUMNS: what the undo would apply
    skipped: pd.DataFrame   # SKIPPED_COLUMNS: the run's changes it leaves, and why


def to_put_back(applied: pd.DataFrame) -> list[str]:
    """The Novi ids of everyone an undo of these changes would give the list's mail again: whose
    records `plan_undo` must have, read from Novi just before."""
    putting_back = applied["action"].map(INVERSE).isin(PUTTING_BACK)
    return sorted(set(applied.loc[putting_back, "novi_id"].dropna()))


def plan_undo(applied: pd.DataFrame, rosters: dict[str, pd.DataFrame], later: pd.DataFrame, *,
              run_name: str, novi: pd.DataFrame, rules: Rules, bans: dict[str, list[str]] | None = None) -> Undo:
    """The undo of one run.

    `applied`: the run's changes whose outcome was applied (the ledger's change rows, with
    the name and preferences each address had). `rosters`: each of those lists as Mailman
    holds it now (ROSTER_COLUMNS). `later`: changes this tool applied to the same lists
    after the run (list_id, match_key, run_name): an address a later run changed again is left
    to that run. `bans`: per list, the bans that apply to it now; a banned address is never
    subscribed again (Mailman would refuse it, every time). `novi`: the members frame
    (tasks.novi.members_frame) of the records of `to_put_back`, read now. `rules`: each list's
    rule: whether opting out and deactivation keep people off it, and its protected addresses,
    never removed or held, by an undo either."""
    applied = missing_as_none(applied)
    records = {str(r["novi_id"]).lower(): r for r in missing_as_none(novi).to_dict("records")}
    rule_of = {rule.list_id: rule for rule in rules.lists}
    touched_later = dict(zip(zip(later["list_id"], later["match_key"]), later["run_name"]))
    on_roster = {list_id: {row["match_key"]: row for row in missing_as_none(roster).to_dict("records")}
                 for list_id, roster in rosters.items()}
    banned_now = set()
    for list_id, mine in applied.groupby("list_id"):
        if (bans or {}).get(list_id):
            keys = mine["match_key"].astype("string")
            banned_now |= {(list_id, key) for key in keys[banned(keys, bans[list_id]).to_numpy(dtype=bool)]}
    changes, skipped = [], []
    kept_off = set()  # (list, Novi id) whose old address Novi's record now keeps off the list
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
                       and row.match_key in rule_of[row.list_id].protected else None)
                   or None)
        novi_says = (_not_to_put_back(row, records.get(str(row.novi_id).lower()), rule_of[row.list_id])
                     if inverse in PUTTING_BACK and not why_not else None)
        if novi_says and inverse == Action.SUBSCRIBE and row.novi_id is not None:
            kept_off.add((row.list_id, row.novi_id))
        why_not = why_not or novi_says
        if why_not:
            skipped.append({"list_id": row.list_id, "email": row.email, "novi_id": row.novi_id,
                            "action": inverse, "reason": why_not})
            continue
        change = dict.fromkeys(CHANGE_COLUMNS)
        change.update(list_id=row.list_id, action=inverse, email=row.email, match_key=row.match_key,
                      novi_id=row.novi_id, reason=f"undo of {run_name}: {_what(row)}")
        if now is not None:  # with the account it is held through now: a rename there is the account's
            change.update(member_id=now["member_id"], previous=now["display_name"], display_name=now["display_name"],
                          account=now.get("account"))
        if inverse == Action.SUBSCRIBE:  # as they were: their name, digest and moderation, no welcome
            change.update(display_name=row.previous, **{c: getattr(row, c) for c in PREFERENCE_COLUMNS})
            if row.delivery_mode is None:  # removed before preferences were read for every removal
                change["reason"] += "; their delivery settings were not recorded: Mailman's defaults"
        elif inverse == Action.RENAME:
            change.update(display_name=row.previous)
        changes.append(change)
    changes = _keep_moves_whole(changes, skipped, kept_off)
    return Undo(pd.DataFrame(changes, columns=CHANGE_COLUMNS).astype("string"),
                pd.DataFrame(skipped, columns=SKIPPED_COLUMNS).astype("string"))


def _not_to_put_back(row, record: dict | None, rule: ListRule) -> str | None:
    """Why an address this run took off (or held) is not given the list's mail again, or None.
    `record`: its member's Novi record as read now (None: Novi no longer has it)."""
    if row.reason == REASON_OPTED_OUT:
        return "removed because they opted out of email in Novi: their own choice, not undone"
    if row.novi_id is None:  # an address Novi never knew (a mirror list's): back as it was, unmanaged
        return None
    if record is None:
        return "no longer in Novi (deleted or merged): not put back"
    if record["quarantine"] is not None:
        return f"Novi's record cannot be read now ({record['quarantine']}): not put back"
    if record["match_key"] != row.match_key:
        return f"Novi now gives this member another address ({record['email'] or 'none'}): not put back"
    if rule.exclude_opted_out and record["opted_out"]:
        return "opted out of email in Novi since: not put back"
    if rule.active_only and not record["active"]:
        return "inactive in Novi now: not put back"
    return None


def _keep_moves_whole(changes: list[dict], skipped: list[dict], kept_off: set[tuple[str, str]]) -> list[dict]:
    """An address change is undone whole or not at all: where Novi keeps the old address off
    (`kept_off`: list and Novi id), the new one the run subscribed stays (removed, the member
    would be on neither). Where the old address is back already (by hand, by a later run) the
    new one goes as any undone subscribe does. Moves the new address's removal from `changes`
    to `skipped`; the changes left."""
    stays = [c["action"] == Action.UNSUBSCRIBE and (c["list_id"], c["novi_id"]) in kept_off for c in changes]
    skipped += [{"list_id": c["list_id"], "email": c["email"], "novi_id": c["novi_id"], "action": c["action"],
                 "reason": "the member's old address is not put back (see it): this one stays"}
                for c, stay in zip(changes, stays) if stay]
    return [c for c, stay in zip(changes, stays) if not stay]


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
