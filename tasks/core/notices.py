"""What a run makes Mailman send to a list's owners by itself: known before any write, from the
list's settings, so that `check`, the plan and the summary can say it (issue 32).

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


def owner_notices(changes: pd.DataFrame, settings: Mapping[str, Mapping[str, object]], rules: Rules) -> dict[str, int]:
    """Per list (every list in `settings`), the notices its owners get for these changes."""
    goodbye = {rule.list_id: rule.send_goodbye for rule in rules.lists}
    notifying = changes["action"].eq(Action.SUBSCRIBE) | (
        changes["action"].eq(Action.UNSUBSCRIBE) & changes["list_id"].map(goodbye).fillna(False).astype(bool))
    counted = changes.loc[notifying.to_numpy(dtype=bool)].groupby("list_id").size()
    return {list_id: int(counted.get(list_id, 0)) if said.get("admin_notify_mchanges") is True else 0
            for list_id, said in settings.items()}
