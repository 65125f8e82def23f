"""How the flow cuts a plan into batch tasks."""

import pandas as pd

from tasks.core.schema import CHANGE_COLUMNS
from tasks.mailman import batches


def changes(rows):
    """Changes as the planner makes them: each carries its address's match key."""
    frame = pd.DataFrame(rows, columns=["list_id", "action", "email"])
    frame["match_key"] = frame["email"].str.casefold()
    for column in CHANGE_COLUMNS:
        if column not in frame:
            frame[column] = pd.NA
    return frame[CHANGE_COLUMNS].astype("string")


def test_subscribes_of_one_address_never_split_across_batches():
    rows = [(f"l{n}", "subscribe", f"{a}@x.org") for a in "abcde" for n in range(3)]
    work = batches(changes(rows), batch_size=2)
    assert [action for action, _ in work] == ["subscribe"] * 3
    for _, batch in work:
        for address in set(batch["email"]):
            assert (batch["email"] == address).sum() == 3  # every list of the address, together
    assert sorted(len(b) for _, b in work) == [3, 6, 6]


def test_one_rename_per_address_whatever_the_lists():
    rows = [("l1", "rename", "A@x.org"), ("l2", "rename", "a@x.org"), ("l1", "rename", "b@x.org")]
    work = batches(changes(rows), batch_size=100)
    assert len(work) == 1 and sorted(work[0][1]["email"].str.casefold()) == ["a@x.org", "b@x.org"]


def test_other_actions_are_batched_per_list():
    rows = [("l1", "unsubscribe", f"u{i}@x.org") for i in range(5)] + [("l2", "unsubscribe", "v@x.org")]
    work = batches(changes(rows), batch_size=2)
    assert [(len(b), set(b["list_id"])) for _, b in work] == [(2, {"l1"}), (2, {"l1"}), (1, {"l1"}), (1, {"l2"})]
