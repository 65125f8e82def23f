"""What a run makes Mailman send to list owners by itself (issue 32), known before any write."""

import pandas as pd

from tasks.core.notices import owner_notices
from tasks.core.rules import parse_rules

L, M, N = "members.example.org", "board.example.org", "quiet.example.org"


def test_a_notice_per_subscribe_and_per_unsubscribe_that_sends_a_goodbye_where_the_list_asks():
    """Measured on 3.3.10: one per subscribe, one per single unsubscribe, none for the mass
    unsubscribe (removals without goodbye); only where admin_notify_mchanges is on."""
    changes = pd.DataFrame({"list_id": [L, L, L, M, M, N], "action": ["subscribe", "subscribe", "unsubscribe",
                                                                       "subscribe", "unsubscribe", "subscribe"]})
    rules = parse_rules({"lists": [{"list_id": L}, {"list_id": M, "send_goodbye": True}, {"list_id": N}]})
    settings = {L: {"admin_notify_mchanges": True}, M: {"admin_notify_mchanges": True},
                N: {"admin_notify_mchanges": False}}
    assert owner_notices(changes, settings, rules) == {L: 2, M: 2, N: 0}
    assert owner_notices(changes.iloc[:0], settings, rules) == {L: 0, M: 0, N: 0}


def test_a_list_anyone_can_join_around_novi_is_named_with_its_policy():
    from tasks.core.notices import open_doors

    settings = {L: {"subscription_policy": "confirm"}, M: {"subscription_policy": "moderate"},
                N: {"subscription_policy": "open"}, "x.example.org": {"subscription_policy": "confirm_then_moderate"}}
    assert open_doors(settings) == {L: "confirm", N: "open"}
