"""What a list's settings mean for a sync, read before any write so that `check`, the plan and
the summary can say it (issue 32): the notices Mailman sends the list's owners by itself, and
whether people can join the list around Novi.

Measured on 3.3.10 with the list's `admin_notify_mchanges` on: every subscribe queues one notice
to the owners; a single unsubscribe (`DELETE /members/{id}`, how removals go when the rule
sends goodbyes) queues one too, with the goodbye; the mass unsubscribe (removals without
goodbye, the default) queues none. (Mailman's own `syncmembers` has `--no-admin-notify`; the
REST API has no switch per request.)
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from tasks.core.rules import Rules
from tasks.core.schema import Action

# A list's settings a plan reads (GET /lists/{id}/config): who Mailman mails by itself.
LIST_SETTINGS = ("admin_notify_mchanges", "send_welcome_message", "send_goodbye_message", "subscription_policy")


# Subscription policies that let someone join without Novi: `open` (no confirmation at all) and
# `confirm` (the person confirms by mail); `moderate` and `confirm_then_moderate` need a moderator.
OPEN_DOORS = ("open", "confirm")


def open_doors(settings: Mapping[str, Mapping[str, object]]) -> dict[str, str]:
    """The lists whose subscription policy lets people join around Novi, with that policy."""
    return {list_id: str(said.get("subscription_policy")) for list_id, said in settings.items()
            if said.get("subscription_policy") in OPEN_DOORS}


def owner_notices(changes: pd.DataFrame, settings: Mapping[str, Mapping[str, object]], rules: Rules) -> dict[str, int]:
    """Per list (every list in `settings`), the notices its owners get for these changes."""
    goodbye = {rule.list_id: rule.send_goodbye for rule in rules.lists}
    notifying = changes["action"].eq(Action.SUBSCRIBE) | (
        changes["action"].eq(Action.UNSUBSCRIBE) & changes["list_id"].map(goodbye).fillna(False).astype(bool))
    counted = changes.loc[notifying.to_numpy(dtype=bool)].groupby("list_id").size()
    return {list_id: int(counted.get(list_id, 0)) if said.get("admin_notify_mchanges") is True else 0
            for list_id, said in settings.items()}
