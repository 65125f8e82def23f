"""Alerts as code: Prefect automations that tell operators about the sync's runs, sent through
a saved Prefect notification block (Slack, Teams, a custom webhook, e-mail…).

Open-source Prefect 3.9 evaluates automations on the server (its triggers and actions
services, on by default in `prefect server start`): event triggers, reactive and proactive,
and the send-notification action with Jinja templates over the flow run, its deployment and
the event. Prefect Cloud adds to that (metric triggers over its own data, e-mail without a
block of your own, webhooks in), none of which this needs.

Every flow run state change is an event named after the state: `prefect.flow-run.Failed`,
`.Crashed`, `.Paused` (waiting for an approval), `.Completed`. Our runs keep Prefect's own
state names (the UI's deployment page lists no other) and say what they were in their
message, which the event carries as its resource's `prefect.state-message`: a refusal's starts
"Refused: " (or "Rejected by the operator. Refused: …"), a waiting run's "Waiting for approval",
a dry run's "Dry run, nothing written". The automations match those events and messages for the
runs of the chosen deployments, and are named and tagged so that a second `alerts install`
updates them rather than adding more.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from uuid import UUID

from prefect import get_client
from prefect.blocks.core import Block
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.exceptions import ObjectNotFound

from tasks.errors import SyncError

TAG = "novi-mailman"
DEFAULT_DEPLOYMENTS = ("sync-lists/nightly-full-sync", "sync-member/webhook-member-sync")
FULL_SYNC_FLOW = "sync-lists"
GRACE = timedelta(hours=2)  # a full sync may run late by this much before anyone is told

FAILED = {"prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.TimedOut"}
DONE = {"prefect.flow-run.Completed"}
# What the run was, in its state's message (label patterns: fnmatch, "!" negates).
REFUSAL = {"prefect.state-message": ["*Refused: *", "Waiting for approval*"]}
NOT_A_REFUSAL = {"prefect.state-message": "!*Refused: *"}
NOT_A_DRY_RUN = {"prefect.state-message": "!Dry run*"}  # a dry run synced nothing

RUN = "{{ flow_run.name }} ({{ deployment.name }})"
# A crashed run's process died (killed, out of memory, its machine lost): what it was sending is
# in the ledger as intended, and the next run of its lists settles it (tasks.core.intents).
CRASHED_NOTE = ("Whatever it had sent to Mailman is in the ledger as intended: a Retry, or the next run of its "
                "lists, records what was applied and completes the rest safely; nobody is left unmanaged.")
LINK = "{{ flow_run|ui_url }}"


class AlertsError(SyncError):
    """Alerts could not be installed: a block or a deployment that is not there."""


@dataclass(frozen=True)
class Target:
    name: str           # flow/deployment, as the command line takes it
    id: UUID
    interval: timedelta | None  # between two scheduled runs, if it has a schedule


def notification_block(ref: str) -> UUID:
    """The block document id of a saved notification block, `type-slug/name` (e.g.
    `slack-webhook/ops`), as Prefect's own blocks are addressed."""
    if "/" not in ref:
        raise AlertsError(f"give the notification block as TYPE/NAME (e.g. slack-webhook/{ref} or "
                          f"custom-webhook/{ref}); `prefect block ls` shows yours")
    try:
        block = Block.load(ref)
    except (ValueError, KeyError) as exc:
        raise AlertsError(f"no notification block {ref!r} on this Prefect server ({exc}); save one in the UI "
                          "(Blocks → +) or in Python, then try again") from None
    if not callable(getattr(block, "notify", None)):
        raise AlertsError(f"{ref} is not a notification block (it has no notify)")
    return block._block_document_id


def _interval(deployment) -> timedelta | None:
    """The time between two runs of its first active schedule (cron, interval or rrule)."""
    from prefect.server.schemas import schedules as server_schedules  # the schedules' own date rules

    for item in deployment.schedules or []:
        if not item.active:
            continue
        schedule = item.schedule
        kind = {"CronSchedule": server_schedules.CronSchedule, "IntervalSchedule": server_schedules.IntervalSchedule,
                "RRuleSchedule": server_schedules.RRuleSchedule}.get(type(schedule).__name__)
        if kind is None:
            continue
        dates = asyncio.run(kind(**schedule.model_dump()).get_dates(n=2, start=datetime.now(timezone.utc)))
        if len(dates) == 2:
            return dates[1] - dates[0]
    return None


def targets(names: list[str]) -> list[Target]:
    found = []
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                deployment = client.read_deployment_by_name(name)
            except ObjectNotFound:
                raise AlertsError(f"no deployment {name!r} on this Prefect server: deploy prefect.yaml first "
                                  "(`prefect deploy --all`), or name yours with --deployment FLOW/DEPLOYMENT") from None
            found.append(Target(name, deployment.id, _interval(deployment)))
    return found


def _notify(block_id: UUID, subject: str, body: str) -> SendNotification:
    return SendNotification(block_document_id=block_id, subject=subject, body=body)


def _on(deployments: list[Target], expect: set[str], **trigger) -> EventTrigger:
    return EventTrigger(expect=expect, posture=trigger.pop("posture", Posture.Reactive),
                        match_related={"prefect.resource.role": "deployment",
                                       "prefect.resource.id": [f"prefect.deployment.{d.id}" for d in deployments]},
                        **trigger)


def automations(deployments: list[Target], block_id: UUID, grace: timedelta = GRACE) -> list[AutomationCore]:
    """The alerts, as Prefect automations (not yet saved)."""
    def automation(name: str, description: str, trigger: EventTrigger, actions: list) -> AutomationCore:
        return AutomationCore(name=f"novi-mailman: {name}", description=description, tags=[TAG], trigger=trigger,
                              actions=actions)

    found = [
        automation("run failed", "A sync or member-sync run failed or crashed: the reason and the fix.",
                   _on(deployments, FAILED, match=NOT_A_REFUSAL),
                   [_notify(block_id, f"novi-mailman: {RUN} {{{{ flow_run.state.name }}}}",
                            f"{RUN} ended {{{{ flow_run.state.name }}}}: {{{{ flow_run.state.message }}}}\n\n"
                            f"{{% if flow_run.state.name == 'Crashed' %}}{CRASHED_NOTE}\n\n{{% endif %}}"
                            f"The run and its logs: {LINK}")]),
        automation("run refused", "A guard refused a run's plan, or a run waits for an operator's approval.",
                   _on(deployments, {"prefect.flow-run.Failed", "prefect.flow-run.Paused"}, match=REFUSAL),
                   [_notify(block_id, f"novi-mailman: {RUN} needs an operator",
                            f"{RUN} is {{{{ 'waiting for approval' if flow_run.state.name == 'Paused' else 'refused' }}}}: "
                            f"{{{{ flow_run.state.message }}}}\n\n"
                            "Nothing was written. Read the plan's tables and approve it (Resume, tick approve) "
                            f"or leave it: {LINK}")]),
        automation("recovered", "A run completed after a failed or refused one of the same deployment.",
                   _on(deployments, DONE, match=NOT_A_DRY_RUN, after=FAILED,
                       for_each={"related:deployment:prefect.resource.id"}, within=timedelta(days=30)),
                   [_notify(block_id, f"novi-mailman: {RUN} recovered",
                            f"{RUN} completed after an earlier failed or refused run: "
                            f"{{{{ flow_run.state.message }}}}\n\n{LINK}")]),
    ]
    for target in deployments:
        if target.interval is None or not target.name.startswith(f"{FULL_SYNC_FLOW}/"):
            continue  # only a scheduled full sync is expected on time
        window = target.interval + grace
        seconds = window.total_seconds()
        hours = f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds:.0f} s"
        found.append(automation(
            f"no completed sync of {target.name}",
            f"No Completed full sync of {target.name} within its schedule's interval + {grace}.",
            _on([target], DONE, match=NOT_A_DRY_RUN, posture=Posture.Proactive, within=window),
            [_notify(block_id, f"novi-mailman: no completed sync of {target.name} in {hours}",
                     f"No run of {target.name} has completed in the last {hours} (its schedule's interval and "
                     "a grace period): the lists may be out of step with Novi. Look at its runs and its "
                     "work pool's worker in the Prefect UI. This repeats for every such window until a run "
                     "completes.")]))
    return found


def install(deployments: list[Target], block_id: UUID, grace: timedelta = GRACE) -> list[tuple[str, str]]:
    """Create the automations, or update those of the same name: (name, "created"|"updated")."""
    done = []
    with get_client(sync_client=True) as client:
        for automation in automations(deployments, block_id, grace):
            existing = [a for a in client.read_automations_by_name(automation.name) if TAG in a.tags]
            if existing:
                client.update_automation(existing[0].id, automation)
                for extra in existing[1:]:  # a name is one alert
                    client.delete_automation(extra.id)
                done.append((automation.name, "updated"))
            else:
                client.create_automation(automation)
                done.append((automation.name, "created"))
    return done


def installed() -> list:
    """The automations `install` made, by their tag."""
    with get_client(sync_client=True) as client:
        return sorted((a for a in client.read_automations() if TAG in a.tags), key=lambda a: a.name)


def remove() -> list[str]:
    removed = []
    with get_client(sync_client=True) as client:
        for automation in installed():
            client.delete_automation(automation.id)
            removed.append(automation.name)
    return removed
