"""The change digest: what a run did to a list, written for the people who look after its
members (list owners, membership staff), not for operators. Pure: text from frames.

One message per run and destination, never per member. Each person is named with their Novi
id, so staff can find the record to fix; nothing in it is a secret (no key, no password, no
URL but the run's page).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import pandas as pd

from tasks.core.schema import ACTIONS, REASON_ADDRESS_CHANGED, REASON_BANNED, Action, Outcome, missing_as_none

# The sections of a list's part, in the order staff read them.
SECTIONS = ("Joined", "Left", "Moved to a new address", "Held (delivery stopped)", "Released", "Renamed",
            "Made moderators", "No longer moderators", "Not done (failed)", "Banned in Mailman, left off", "Address bouncing")


# How a state message counts each action: "+9 −11 held 1 renamed 3 on members.example.org".
COUNT_WORDS = {Action.SUBSCRIBE: "+", Action.UNSUBSCRIBE: "−", Action.HOLD: "held ", Action.RELEASE: "released ",
               Action.RENAME: "renamed ", Action.MODERATE: "moderators +", Action.UNMODERATE: "moderators −"}


def counted(counts: Mapping[str, int]) -> str:
    """Changes counted by action the way a state message says them: "+9 −11 held 1 renamed 3"."""
    return " ".join(f"{COUNT_WORDS[a]}{int(counts[a]):,}" for a in ACTIONS if counts.get(a, 0))


def changes_line(changes: pd.DataFrame) -> str:
    """The changes counted by action, per list: what a runs list shows of a run at a glance."""
    return "; ".join(f"{counted(mine['action'].value_counts())} on {list_id}"
                     for list_id, mine in changes.groupby("list_id", sort=True))


class Digest(NamedTuple):
    subject: str
    body: str


def _person(row: dict, email: str | None = None) -> str:
    name = row.get("display_name") or ""
    novi = f" (Novi {row['novi_id']})" if row.get("novi_id") else ""
    return f"{name} <{email or row['email']}>{novi}".strip()


def list_sections(list_id: str, outcomes: pd.DataFrame, left_alone: pd.DataFrame,
                  bouncing: pd.DataFrame) -> dict[str, list[str]]:
    """One list's lines per section (empty sections left out)."""
    mine = missing_as_none(outcomes.loc[outcomes["list_id"] == list_id])
    done = mine.loc[mine["outcome"] == Outcome.APPLIED]
    # An address change is a removal of the old address and a subscribe of the new one, for the
    # same Novi member: one line, "old → new".
    moved_out = done.loc[(done["action"] == Action.UNSUBSCRIBE) & (done["reason"] == REASON_ADDRESS_CHANGED)]
    moved_in = done.loc[(done["action"] == Action.SUBSCRIBE) & done["novi_id"].isin(set(moved_out["novi_id"]))]
    new_address = dict(zip(moved_in["novi_id"], moved_in["email"]))
    rest = done.drop(index=moved_out.index.union(moved_in.index))
    sections: dict[str, list[str]] = {
        "Joined": [_person(r) for r in _rows(rest, Action.SUBSCRIBE)],
        "Left": [f"{_person(r)}: {r['reason']}" for r in _rows(rest, Action.UNSUBSCRIBE)],
        "Moved to a new address": [f"{r.get('display_name') or ''} <{r['email']}> → <{new_address.get(r['novi_id'], '?')}>"
                                   f" (Novi {r['novi_id']})".strip() for r in moved_out.to_dict("records")],
        "Held (delivery stopped)": [f"{_person(r)}: {r['reason']}" for r in _rows(rest, Action.HOLD)],
        "Released": [_person(r) for r in _rows(rest, Action.RELEASE)],
        "Renamed": [f"{r.get('previous') or '(no name)'} → {r.get('display_name') or '(no name)'} <{r['email']}>"
                    + (f" (Novi {r['novi_id']})" if r.get("novi_id") else "") for r in _rows(rest, Action.RENAME)],
        "Made moderators": [f"{_person(r)}: {r['reason']}" for r in _rows(rest, Action.MODERATE)],
        "No longer moderators": [f"{_person(r)}: {r['reason']}" for r in _rows(rest, Action.UNMODERATE)],
        "Not done (failed)": [f"{r['action']} {_person(r)}: {r.get('detail') or ''}".strip()
                              for r in mine.loc[mine["outcome"] == Outcome.FAILED].to_dict("records")],
        "Banned in Mailman, left off": [_person(r) for r in missing_as_none(left_alone.loc[
            (left_alone["list_id"] == list_id) & (left_alone["reason"] == REASON_BANNED)]).to_dict("records")],
        "Address bouncing": [f"{_person(r)}: {r['state']}" for r in missing_as_none(
            bouncing.loc[bouncing["list_id"] == list_id]).to_dict("records")] if not bouncing.empty else [],
    }
    return {title: sorted(lines) for title, lines in sections.items() if lines}


def compose(list_ids: list[str], outcomes: pd.DataFrame, left_alone: pd.DataFrame, bouncing: pd.DataFrame,
            quarantined: pd.DataFrame, run_name: str, run_url: str | None) -> Digest | None:
    """The message for these lists, or None when the run applied nothing to any of them."""
    applied = outcomes.loc[(outcomes["outcome"] == Outcome.APPLIED) & outcomes["list_id"].isin(list_ids)]
    if applied.empty:
        return None
    lines = [f"novi-mailman run {run_name} changed these lists in step with Novi.", ""]
    for list_id in list_ids:
        sections = list_sections(list_id, outcomes, left_alone, bouncing)
        if not sections:
            continue
        lines += [f"== {list_id} ==", ""]
        for title in SECTIONS:
            if title in sections:
                lines += [f"{title} ({len(sections[title])}):", *(f"  {line}" for line in sections[title]), ""]
    if quarantined is not None and not quarantined.empty:
        rows = missing_as_none(quarantined).to_dict("records")
        lines += [f"Novi records not synced until fixed in Novi ({len(rows)}):",
                  *sorted(f"  Novi {r['novi_id']} <{r.get('email') or 'no address'}>: {r['quarantine']}" for r in rows),
                  ""]
    lines += [f"The run, with every change and its reason: {run_url}" if run_url else
              f"The run's artifacts are in the Prefect UI (run {run_name}).",
              "", "-- novi-mailman (this message is sent after each run that changes a list)"]
    return Digest(f"[novi-mailman] {changes_line(applied)} (run {run_name})", "\n".join(lines) + "\n")


def _rows(frame: pd.DataFrame, action: str) -> list[dict]:
    return frame.loc[frame["action"] == action].to_dict("records")
