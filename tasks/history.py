"""What happened to one address, across lists and runs, from the ledger: the answer to "why was
jane removed?", as the command line prints it and as the `address-history` flow publishes it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pandas as pd

from tasks.core.schema import Outcome, RunKind, Status, dot_list_id
from tasks.core.text import markdown_cell
from tasks.errors import BadParameter
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


def run_and_kind(row) -> str:
    """A list history's run column: the run, and what kind of run when not a full sync."""
    return run_label(row) + (f", {row.kind}" if row.kind and row.kind != RunKind.FULL else "")


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


LIST_HISTORY_KEY = "novi-mailman-list-history"


@dataclass
class ListHistory:
    """What changed on one list over a period: every change any run recorded (full syncs,
    member runs, undos), applied or not, as one table: "what changed on list Y this week?"."""

    list_id: str
    since: datetime
    until: datetime
    ledger: str
    changes: pd.DataFrame       # Ledger.list_history: newest first

    @classmethod
    def read(cls, ledger: Ledger, list_id: str, since: datetime, until: datetime) -> ListHistory:
        return cls(list_id, since, until, ledger.location, ledger.list_history(list_id, since, until))

    @classmethod
    def last_days(cls, ledger: Ledger, list_id: str, days: int) -> ListHistory:
        """The last `days` days up to now, for a list given either way (members@… or members.…)."""
        try:
            canonical = dot_list_id(list_id)
        except ValueError as exc:
            raise BadParameter(str(exc)) from None
        until = datetime.now(timezone.utc)
        return cls.read(ledger, canonical, until - timedelta(days=days), until)

    def period(self) -> str:
        return f"{self.since:%Y-%m-%d %H:%M} to {self.until:%Y-%m-%d %H:%M} UTC"

    def summary(self) -> str:
        """One line: the run's state message. Counts by outcome, then the applied ones by action."""
        if self.changes.empty:
            return f"Nothing recorded on {self.list_id} from {self.period()}"
        applied = self.changes[self.changes["outcome"] == Outcome.APPLIED]
        actions = ", ".join(f"{n:,} {action}" for action, n in applied["action"].value_counts().sort_index().items())
        others = ", ".join(f"{n:,} {outcome}" for outcome, n in
                           self.changes.loc[self.changes["outcome"] != Outcome.APPLIED, "outcome"]
                           .value_counts().sort_index().items())
        runs = self.changes["run_id"].nunique()
        return (f"{len(self.changes):,} changes on {self.list_id} from {self.period()} by {runs:,} "
                f"run{'s' * (runs != 1)}: {len(applied):,} applied ({actions or 'none'})"
                + (f"; {others}" if others else ""))

    def as_json(self) -> dict:
        return {"list_id": self.list_id, "since": self.since.isoformat(), "until": self.until.isoformat(),
                "ledger": self.ledger, "changes": json.loads(self.changes.to_json(orient="records", date_format="iso"))}

    def markdown(self) -> str:
        """One table, newest first: who, what and why first (what fits at 1,440 px), the run last."""
        lines = [f"# What changed on {markdown_cell(self.list_id)}", "", f"**{markdown_cell(self.summary())}**", "",
                 f"Ledger: `{self.ledger}`. Every run that touched the list is here: full syncs, member runs "
                 "(webhooks) and undos; refused changes were planned and not written.", ""]
        if self.changes.empty:
            return "\n".join(lines)
        lines += ["| when (UTC) | address | action | outcome | reason | run |", "|---|---|---|---|---|---|"]
        for row in self.changes.head(SHOWN).itertuples():
            cells = [row.at.strftime("%Y-%m-%d %H:%M"), row.email, row.action, row.outcome, row.reason or "",
                     run_and_kind(row)]
            lines.append("| " + " | ".join(markdown_cell(c) for c in cells) + " |")
        if len(self.changes) > SHOWN:
            lines += ["", f"The newest {SHOWN} of {len(self.changes):,} are shown; ask for a shorter period "
                      "to see the rest, or `novi-mailman list-history LIST --days N --json` prints all."]
        return "\n".join(lines) + "\n"


def publish(history: AddressHistory | ListHistory) -> None:
    """A history's answer as its keyed artifact (what the history flows leave in the UI)."""
    from prefect.artifacts import create_markdown_artifact  # the command line's history needs no Prefect

    if isinstance(history, AddressHistory):
        create_markdown_artifact(markdown(history), key=HISTORY_KEY, description=history.summary())
    else:
        create_markdown_artifact(history.markdown(), key=LIST_HISTORY_KEY, description=history.summary())
