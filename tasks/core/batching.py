"""How a plan's changes are cut into batches for Mailman, and how a batch's results become each
change's outcome. Pure pandas: the rules measured against real cores (see each function), kept
apart from the client that sends the batches (tasks.mailman)."""

from __future__ import annotations

import pandas as pd

from tasks.core.schema import ROLE_ACTIONS, Action, Outcome


def batches(changes: pd.DataFrame, batch_size: int) -> list[tuple[str, pd.DataFrame]]:
    """The changes as batches of one action each, of about `batch_size` rows.

    Subscribes of one address to several lists share a batch and run one after another:
    Mailman answers 400 (an IntegrityError) when two requests create the same new address at
    once (measured: 59 of 60 concurrent pairs). A name lives on the address, so each address
    is renamed once whatever the number of lists. Other actions are per list (mass
    unsubscribe is a per-list call; member ids belong to one list).
    """
    out: list[tuple[str, pd.DataFrame]] = []
    for action, group in changes.groupby("action", sort=False):
        if action == Action.SUBSCRIBE:
            group = group.sort_values(["match_key", "list_id"], kind="stable")
            new_address = group["match_key"].ne(group["match_key"].shift()).fillna(True).astype(int)
            address_number = new_address.cumsum() - 1
            out += [(action, rows) for _, rows in group.groupby(address_number // batch_size, sort=True)]
            continue
        if action == Action.RENAME:
            group = group.drop_duplicates("match_key")
            out += [(action, group.iloc[i:i + batch_size]) for i in range(0, len(group), batch_size)]
            continue
        for _, per_list in group.groupby("list_id", sort=True):
            out += [(action, per_list.iloc[i:i + batch_size]) for i in range(0, len(per_list), batch_size)]
    return out


def waves(work: list[tuple[str, pd.DataFrame]]) -> list[list[tuple[str, pd.DataFrame]]]:
    """The batches in the order they may run, each wave after the one before has ended: every
    membership batch, then the moderator roles. A new chair is subscribed and made moderator in
    one run, and Mailman fails one of two requests creating the same new address at once (see
    `batches`; a 500 on a real core when the two went out side by side)."""
    members = [batch for batch in work if batch[0] not in ROLE_ACTIONS]
    roles = [batch for batch in work if batch[0] in ROLE_ACTIONS]
    return [wave for wave in (members, roles) if wave]


def batch_outcomes(changes: pd.DataFrame, work: list[tuple[str, pd.DataFrame]], results: list) -> pd.DataFrame:
    """Each change with its outcome, from its batch's result (`apply_changes`' rows, or the
    exception that failed the whole batch). A rename was sent once per address: every list's
    rename row of that address shares its outcome."""
    done = []
    for (_, rows), result in zip(work, results):
        if isinstance(result, BaseException):
            outcome = pd.DataFrame({"outcome": Outcome.FAILED, "detail": str(result)}, index=rows.index)
        else:
            outcome = pd.DataFrame(result, index=rows.index)[["outcome", "detail"]]
        done.append(outcome.assign(action=rows["action"], match_key=rows["match_key"]))
    done = pd.concat(done)
    outcomes = changes.join(done[["outcome", "detail"]])
    is_rename = outcomes["action"] == Action.RENAME
    if is_rename.any():
        renamed = done.loc[done["action"] == Action.RENAME].set_index("match_key")[["outcome", "detail"]]
        keys = outcomes.loc[is_rename, "match_key"]
        outcomes.loc[is_rename, "outcome"] = keys.map(renamed["outcome"]).to_numpy()
        outcomes.loc[is_rename, "detail"] = keys.map(renamed["detail"]).to_numpy()
    return outcomes
