"""The `address-history` flow: "why was jane removed?" answered in the Prefect UI."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed, State

from tasks.errors import BadParameter, SyncError
from tasks.history import HISTORY_KEY, AddressHistory, markdown
from tasks.ledger import open_ledger
from tasks.run import failed


@flow(name="address-history", flow_run_name="history-of-an-address")
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
    create_markdown_artifact(markdown(history), key=HISTORY_KEY, description=history.summary())
    return Completed(message=history.summary(), data=history.as_json())
