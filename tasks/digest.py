"""Send the change digest (tasks.core.digest) after a real run: by e-mail through a saved
prefect-email `EmailServerCredentials` block, or through any saved Prefect notification block.

A digest that cannot be sent never fails the run (Mailman already holds its changes): the run's
message says so, and the log has why.
"""

from __future__ import annotations

from email.message import EmailMessage

import pandas as pd
from prefect import get_run_logger
from prefect.blocks.core import Block
from prefect.runtime import flow_run
from prefect_email import EmailServerCredentials

from tasks.blocks import saved
from tasks.core.digest import Digest, compose
from tasks.core.rules import DigestSettings, Rules
from tasks.core.text import chat_safe


def run_url() -> str | None:
    """This flow run's page in the Prefect UI, when there is a UI to point at."""
    from prefect.settings import PREFECT_UI_URL

    ui, run_id = PREFECT_UI_URL.value(), flow_run.get_id()
    return f"{ui.rstrip('/')}/runs/flow-run/{run_id}" if ui and run_id else None


def send_digests(rules: Rules, outcomes: pd.DataFrame, left_alone: pd.DataFrame, bouncing: pd.DataFrame,
                 quarantined: pd.DataFrame, mailman, run_name: str) -> list[str]:
    """One message per destination for the lists whose rule asks for a digest and that this run
    changed; what could not be sent, one line each."""
    groups: dict[str, tuple[DigestSettings, list[str]]] = {}
    for rule in rules.lists:
        if rule.digest is not None:
            # A list's owners hear of their own list only: its members are not another list's business.
            key = rule.digest.model_dump_json() + (rule.list_id if rule.digest.to == "owners" else "")
            groups.setdefault(key, (rule.digest, []))[1].append(rule.list_id)
    problems: list[str] = []
    link = run_url()
    for settings, list_ids in groups.values():
        # Records quarantined anywhere in Novi are membership staff's to fix, not a list owner's.
        staff = settings.to != "owners"
        digest = compose(list_ids, outcomes, left_alone, bouncing, quarantined if staff else None, run_name, link)
        if digest is None:
            continue
        try:
            if settings.email_block:
                _email(settings, digest, list_ids, mailman)
            else:
                block = Block.load(settings.notify_block)
                with block.raise_on_failure():  # Slack's and Teams' blocks would otherwise swallow a failure
                    # Novi's text must not mention @channel or make links in a chat room
                    block.notify(chat_safe(digest.body), subject=chat_safe(digest.subject))
        except Exception as exc:  # noqa: BLE001 - whatever a block raises, the run it reports on stands
            # Only the kind of failure: an error's text can carry a webhook's token or the recipients.
            status = getattr(getattr(exc, "response", None), "status_code", None)
            problem = (f"the change digest for {', '.join(list_ids)} was not sent ({type(exc).__name__}"
                       f"{f' {status}' if status else ''})")
            get_run_logger().warning("%s", problem)
            problems.append(problem)
    return problems


def _email(settings: DigestSettings, digest: Digest, list_ids: list[str], mailman) -> None:
    credentials = saved(EmailServerCredentials, settings.email_block)
    to = settings.to if isinstance(settings.to, list) else sorted({a for lid in list_ids for a in mailman.owners(lid)})
    if not to:
        raise ValueError(f"no owner on {', '.join(list_ids)} to send it to (set digest.to)")
    message = EmailMessage()
    message["Subject"], message["To"] = digest.subject, ", ".join(to)
    message["From"] = settings.from_address or credentials.username or "novi-mailman@localhost"
    message.set_content(digest.body)
    with credentials.get_server() as server:
        server.send_message(message)
