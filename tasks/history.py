"""What happened to one address, across lists and runs, from the ledger: the answer to "why was
jane removed?", as the command line prints it and as the `address-history` flow publishes it."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from tasks.core.schema import Status
from tasks.core.text import markdown_cell
from tasks.ledger import Ledger

HISTORY_KEY = "novi-mailman-address-history"
SHOWN = 200  # changes a markdown answer lists, newest first; `novi-mailman history --json` has all


@dataclass
class AddressHistory:
    address: str
    ledger: str                 # where it was read (a redacted URL or a path)
    lists: list[dict]           # what the ledger holds for the address now, one per list
    changes: pd.DataFrame       # every change recorded for it, newest first (Ledger.history)

    @classmethod
    def read(cls, ledger: Ledger, address: str) -> AddressHistory:
        now = ledger.memberships(address)
        lists = [] if now.empty else json.loads(now.drop(columns=["match_key"]).to_json(orient="records",
                                                                                        date_format="iso"))
        return cls(address=address, ledger=ledger.location, lists=lists, changes=ledger.history(address))

    def as_json(self) -> dict:
        return {"address": self.address, "ledger": self.ledger, "lists": self.lists,
                "changes": json.loads(self.changes.to_json(orient="records", date_format="iso"))}

    def summary(self) -> str:
        """One line: a run's state message."""
        if self.changes.empty and not self.lists:
            return f"Nothing recorded for {self.address}"
        changes, lists = len(self.changes), self.changes["list_id"].nunique()
        return (f"{changes:,} change{'s' * (changes != 1)} recorded for {self.address} on {lists:,} "
                f"list{'s' * (lists != 1)}")


def standing(item: dict) -> str:
    """Where the address stands on one list, as a sentence."""
    since = item["first_managed_at"][:10]
    if item["status"] == Status.MEMBER:
        return f"{item['list_id']}: managed since {since} ({item['how']}), Novi id {item['novi_id']}"
    off = (item["left_at"] or "")[:10]
    return f"{item['list_id']}: " + {
        Status.REMOVED: f"removed for lapsing on {off}; their preferences are restored if they renew",
        Status.BOUNCED: f"removed by Mailman after bounces by {off}; not re-added until the address changes in Novi",
    }.get(item["status"], f"left the list themselves on {off}; not re-added")


def run_label(row) -> str:
    return (row.run_name or row.run_id) + (f" (attempt {row.attempt})" if row.attempt > 1 else "")


def markdown(history: AddressHistory) -> str:
    """The answer as the UI shows it: where the address stands, then every change, newest first."""
    lines = [f"# History of {markdown_cell(history.address)}", "", f"**{markdown_cell(history.summary())}**", "", f"Ledger: `{history.ledger}`", ""]
    lines += [f"- {standing(item)}" for item in history.lists] or ["- Not managed on any list now."]
    if not history.changes.empty:
        lines += ["", "| when (UTC) | list | action | outcome | reason | run |", "|---|---|---|---|---|---|"]
        for row in history.changes.head(SHOWN).itertuples():
            cells = [row.at.strftime("%Y-%m-%d %H:%M"), row.list_id, row.action, row.outcome, row.reason or "",
                     run_label(row)]
            lines.append("| " + " | ".join(markdown_cell(c) for c in cells) + " |")
        if len(history.changes) > SHOWN:
            lines += ["", f"The newest {SHOWN} of {len(history.changes):,} are shown; "
                      "`novi-mailman history ADDRESS --json` prints all."]
    return "\n".join(lines) + "\n"
