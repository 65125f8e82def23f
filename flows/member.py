"""The one-member sync: what a Novi webhook triggers, for the few members it names.

The same rules, planner, apply tasks and ledger as the full sync, fed with only the records
and roster rows that concern these members: each member re-read from Novi
(`GET /api/members/{id}`), every record sharing one of their addresses (so a duplicate
resolves as in the full sync), the addresses the ledger ties to them (an old address after a
change), and those addresses' membership on each list. Nothing else is read or touched.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from datetime import datetime, timedelta, timezone

import pandas as pd
from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.sync import _run_id, _run_record, apply_plan, failed_message, finish, open_ledger, resolve_rules
from tasks import report
from tasks.blocks import MailmanCredentials, NoviCredentials
from tasks.guards import REMOVING, roster_collapse
from tasks.mailman import FAILED
from tasks.novi import members_frame
from tasks.planner import plan, settle
from tasks.webhooks import GUID

MAX_MEMBERS = 1000  # a larger batch is the full sync's job
SUMMARY_KEY = "novi-mailman-member-sync"


def _records_for(novi, member_ids: list[str]) -> tuple[dict[str, dict], list[str]]:
    """The members' records and every record sharing one of their addresses; and who was not found."""
    found: dict[str, dict] = {}
    missing: list[str] = []
    for member_id in member_ids:
        record = novi.member(member_id)
        if record is None:  # Novi's "not found" is a 200 with no body: leave it to the full sync
            missing.append(member_id)
        else:
            found[str(record["UniqueID"]).lower()] = record
    emails = {r.get("Email") for r in found.values() if isinstance(r.get("Email"), str) and r["Email"].strip()}
    for email in sorted(emails):
        for record in novi.members_with_email(email.strip()):
            found.setdefault(str(record.get("UniqueID", "")).lower(), record)
    return found, missing


@flow(name="sync-member", task_runner=ThreadPoolTaskRunner(max_workers=4))
def sync_member(
    member_ids: list[str],
    rules_path: str | None = None,
    list_id: str | None = None,
    novi_block: str = "novi",
    mailman_block: str = "mailman",
    ledger_block: str | None = None,
    dry_run: bool = False,
    wait_for_lock_s: int = 900,
) -> dict:
    """Bring these members' subscriptions in step with Novi on every list in the rules."""
    started, started_at = time.monotonic(), datetime.now(timezone.utc)
    ids = sorted({m.strip().lower() for m in member_ids})
    bad = [m for m in ids if not GUID.fullmatch(m)]
    if bad or not ids or len(ids) > MAX_MEMBERS:
        raise ValueError(f"member_ids must be 1 to {MAX_MEMBERS} Novi UniqueIDs ({len(bad)} are not)")
    rules = resolve_rules(rules_path, list_id)
    ledger = open_ledger(ledger_block, create=not dry_run)
    list_ids = [rule.list_id for rule in rules.lists]
    novi = NoviCredentials.load(novi_block).get_client()
    mailman = MailmanCredentials.load(mailman_block).get_client()
    # Dry runs write nothing, so they take no lock; a real one waits for a running full sync.
    held = nullcontext() if dry_run else ledger.lock(list_ids, _run_id(), wait=timedelta(seconds=wait_for_lock_s))
    with held as lease:
        found, missing = _records_for(novi, ids)
        members = members_frame(list(found.values()), list(rules.novi.address_fields))
        remembered = ledger.read(list_ids, novi_ids=list(members["novi_id"]),
                                 match_keys=list(members["match_key"].dropna()))
        keys = sorted(set(members["match_key"].dropna()) | set(remembered["match_key"]))
        rosters = {lid: mailman.membership(lid, keys) for lid in list_ids}
        the_plan = plan(members, rosters, rules, remembered, pd.Timestamp(started_at))

        too_many = [f"{rule.list_id}: {n} removals for {len(ids)} members" for rule in rules.lists
                    if (n := int(((the_plan.changes["list_id"] == rule.list_id)
                                  & the_plan.changes["action"].isin(REMOVING)).sum())) > rule.max_removals]
        too_many += roster_collapse(the_plan, rules)
        if dry_run or too_many:
            outcomes = the_plan.changes.assign(outcome=report.PLANNED if dry_run else report.REFUSED, detail="")
        else:
            outcomes = apply_plan(mailman, the_plan, rules, batch_size=100, workers=2, lease=lease)
        failed = int((outcomes["outcome"] == FAILED).sum())
        state = "refused" if too_many else "failed" if failed else "completed"
        message = (" ".join(too_many) if too_many
                   else failed_message(failed, len(outcomes)) if failed
                   else f"{len(outcomes)} changes for {len(ids) - len(missing)} members"
                   + (f"; {len(missing)} not found in Novi, left to the full sync" if missing else ""))
        if not dry_run:
            lease.check()
            ledger.record(_run_record(started_at, state, message, len(found), kind="member"), list_ids,
                          None if too_many else settle(the_plan.memory, outcomes), outcomes, the_plan.figures,
                          only_keys=keys)

    summary = {
        "state": state, "message": message, "dry_run": dry_run, "members": ids, "not_found": missing,
        "changes": len(outcomes), "outcomes": outcomes["outcome"].value_counts().to_dict(),
        "by_list": {lid: outcomes.loc[outcomes["list_id"] == lid, "action"].value_counts().to_dict()
                    for lid in list_ids},
        "quarantined": the_plan.quarantined["quarantine"].value_counts().to_dict(),
        "duration_s": round(time.monotonic() - started, 2),
        "http_calls": dict(sorted({**novi.http.calls, **mailman.http.calls}.items())),
    }
    create_markdown_artifact(_markdown(summary, outcomes), key=SUMMARY_KEY, description=message[:200])
    return finish(summary, message, refused=bool(too_many), failed=failed, total=len(outcomes))


def _markdown(summary: dict, outcomes: pd.DataFrame) -> str:
    lines = [f"# Member sync: {summary['state']}", "", f"**{summary['message']}**", "",
             f"Members: {len(summary['members'])} · not found in Novi (left to the full sync): "
             f"{', '.join(summary['not_found']) or 'none'}", "", "| list | action | email | reason | outcome |",
             "|---|---|---|---|---|"]
    lines += [f"| {r.list_id} | {r.action} | {r.email} | {r.reason} | {r.outcome} |" for r in outcomes.itertuples()]
    return "\n".join(lines) + "\n"
