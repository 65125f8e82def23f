"""How the flow cuts a plan into batch tasks."""

import pandas as pd

from tasks.core.schema import CHANGE_COLUMNS
from tasks.core.batching import batches, waves


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


def test_moderator_changes_come_after_every_membership_batch():
    rows = [("l1", "moderate", "chair@x.org"), ("l1", "subscribe", "chair@x.org"), ("l1", "unmoderate", "old@x.org"),
            ("l1", "unsubscribe", "old@x.org"), ("l2", "subscribe", "b@x.org")]
    ordered = waves(batches(changes(rows), batch_size=1))
    assert [[action for action, _ in wave] for wave in ordered] == [["subscribe", "subscribe", "unsubscribe"],
                                                                   ["moderate", "unmoderate"]]
    assert waves(batches(changes(rows[1:2] + rows[3:]), batch_size=1))[1:] == []  # no moderators: one wave


def test_a_new_chair_is_made_moderator_only_once_their_subscribe_is_done(prefect_server):
    """A real core fails one of two requests creating the same new address at once (a 500 seen
    in test_routing when a chair's subscribe and moderator role went out side by side)."""
    import re
    import threading
    import time
    from urllib.parse import parse_qs

    import responses
    from prefect import flow

    from tasks.core.planner import Plan
    from tasks.core.rules import parse_rules
    from tasks.mailman import MailmanClient
    from tasks.run import apply_plan
    from tests.fakes import MAILMAN_REST

    in_flight: set[str] = set()
    overlaps: list[str] = []
    lock = threading.Lock()

    def create(request):
        form = {k: v[0] for k, v in parse_qs(request.body).items()}
        address = form["subscriber"].casefold()
        with lock:
            if address in in_flight:
                overlaps.append(f"{form.get('role', 'member')} {address}")
            in_flight.add(address)
        time.sleep(0.3)  # Mailman creating the address
        with lock:
            in_flight.discard(address)
        return 201, {"Location": f"{MAILMAN_REST}/3.1/members/x"}, ""

    work = changes([("board.x.org", "subscribe", f"m{i}@x.org") for i in range(3)]
                   + [("board.x.org", "moderate", "m2@x.org")])
    nothing = pd.DataFrame()
    plan = Plan(changes=work, left_alone=nothing, figures=nothing, quarantined=nothing, memory=nothing,
                    bouncing=nothing, wanting=nothing)

    @flow
    def apply():
        return apply_plan(MailmanClient(MAILMAN_REST, "restadmin", "pw"), plan,
                          parse_rules({"lists": [{"list_id": "board.x.org"}]}), batch_size=1, workers=4)

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback("POST", re.compile(rf"{re.escape(MAILMAN_REST)}/3.1/members$"), callback=create)
        outcomes = apply()
    assert overlaps == []
    assert list(outcomes["outcome"]) == ["applied"] * 4
