"""The history flows, answered in the Prefect UI from the ledger (they write nothing):
`address-history`, "why was jane removed?", and `list-history`, "what changed on list Y this week?"."""

from __future__ import annotations

import re
from typing import Annotated

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Completed, State
from pydantic import Field

from tasks.errors import BadParameter, SyncError
from tasks.history import AddressHistory, ListHistory, publish
from tasks.blocks import open_ledger
from tasks.run import failed


def asked_name(flow_name: str, *parameters: str) -> str:
    """A history run is named after what it was asked (the runs list then reads as the questions
    asked), unless whoever started it typed a name of their own in the form."""
    given = flow_run.get_name() or ""
    # Prefect names a run it was given no name for with two lowercase words ("wise-cheetah",
    # coolname's); anything else was typed, and stays.
    if given and not re.fullmatch(r"[a-z]+-[a-z]+", given):
        return given
    asked = "-".join(str((flow_run.get_parameters() or {}).get(word, "")).strip() for word in parameters)
    return f"{flow_name}-{asked}"[:120]


@flow(name="address-history", flow_run_name=lambda: asked_name("address-history", "address"))
def address_history(address: str, ledger_block: str | None = None) -> State:
    """Publish what happened to one address across lists and runs, from the ledger; writes nothing.

    Args:
        address: The email address to look up (any case).
        ledger_block: Name of a saved LedgerDatabase block; empty: the worker's default SQLite ledger.
    """
    try:
        if "@" not in address or len(address) > 320:
            raise BadParameter("address must be one email address")
        history = AddressHistory.read(open_ledger(ledger_block, create=False), address.strip())
    except SyncError as exc:
        return failed(exc)
    publish(history)
    return Completed(message=history.summary(), data=history.as_json())


@flow(name="list-history", flow_run_name=lambda: asked_name("list-history", "list_id", "days"))
def list_history(list_id: str, days: Annotated[int, Field(ge=1, le=366)] = 7,
                 ledger_block: str | None = None) -> State:
    """Publish what changed on one list over the last `days` days, from the ledger: every change
    any run recorded there (full syncs, member runs, undos; applied, refused or failed), newest
    first, as one table. Writes nothing.

    Args:
        list_id: The list (members@example.org or members.example.org).
        days: How far back to look, in days (1-366).
        ledger_block: Name of a saved LedgerDatabase block; empty: the worker's default SQLite ledger.
    """
    try:
        history = ListHistory.last_days(open_ledger(ledger_block, create=False), list_id, days)
    except SyncError as exc:
        return failed(exc)
    publish(history)
    return Completed(message=history.summary(), data=history.as_json())
