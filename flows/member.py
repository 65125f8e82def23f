"""The one-member sync: what a Novi webhook triggers, for the few members it names.

The same rules, planner, apply tasks and ledger as the full sync, fed with only the records
and roster rows that concern these members: each member re-read from Novi
(`GET /api/members/{id}`), every record sharing one of their addresses (so a duplicate
resolves as in the full sync), the addresses the ledger ties to them (an old address after a
change), and those addresses' membership on each list. Nothing else is read or touched.
"""

# No `from __future__ import annotations`: Prefect builds each run's parameter model from these
# annotations, and a runner serving the flow could not resolve `Annotated` from a string.
from datetime import timedelta
from typing import Annotated

import pandas as pd
from prefect import flow
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from tasks import report
from tasks.blocks import MailmanCredentials, NoviCredentials, saved
from tasks.core.schema import GUID, MAX_MEMBERS_PER_RUN, RunKind
from tasks.mailman import read_bans, read_requests
from tasks.core.members import members_frame
from tasks.errors import BadParameter, SyncError
from tasks.run import Run, RunOptions, failed, heard, plan_lists, read_moderators, tell_staff


@flow(name="sync-member", task_runner=ThreadPoolTaskRunner(max_workers=4))
def sync_member(
    member_ids: list[str],
    rules_path: str | None = None,
    list_id: str | None = None,
    novi_block: str = "novi",
    mailman_block: str = "mailman",
    ledger_block: str | None = None,
    dry_run: bool = False,
    override_guards: bool = False,
    approve: str | None = None,
    wait_for_lock_s: Annotated[int, Field(ge=0, le=24 * 3600)] = 900,
) -> State:
    """Bring these members' subscriptions in step with Novi on every list in the rules.

    The same run as the full sync from the plan on (tasks.run): the guards that mean
    something for a few members (removal count, roster collapse), the lock, the ledger, the
    final state. A refused member run ends refused at once: a webhook's members do not wait
    hours for an operator.

    Args:
        member_ids: Novi UniqueIDs of the members to sync (1 to 1,000).
        rules_path: Routing rules file (YAML), relative to the worker's directory. Give this or list_id.
        list_id: One list id (members@example.org) with every default rule, instead of rules_path.
        novi_block: Name of the saved NoviCredentials block.
        mailman_block: Name of the saved MailmanCredentials block.
        ledger_block: Name of a saved LedgerDatabase block; empty: the default SQLite ledger on the worker.
        dry_run: Plan and report only; nothing is written anywhere.
        override_guards: Lift the safety guards for this run only, whatever the plan. Prefer approve.
        approve: Apply a plan the guards refused, if a fresh plan is still that plan: the 12-digit
            fingerprint the refused run showed.
        wait_for_lock_s: How long a real run waits for a full sync holding the lists (seconds).
    """
    try:
        options = RunOptions(rules_path=rules_path, list_id=list_id, novi_block=novi_block,
                             mailman_block=mailman_block, ledger_block=ledger_block, dry_run=dry_run,
                             override_guards=override_guards, approve=approve)
        return _sync_member(member_ids, options, wait_for_lock_s=wait_for_lock_s)
    except SyncError as exc:
        return failed(exc, novi_block, mailman_block)


def _sync_member(member_ids: list[str], options: RunOptions, *, wait_for_lock_s: int) -> State:
    ids = sorted({m.strip().lower() for m in member_ids})
    bad = [m for m in ids if not GUID.fullmatch(m)]
    if bad or not ids or len(ids) > MAX_MEMBERS_PER_RUN:
        raise BadParameter(f"member_ids must be 1 to {MAX_MEMBERS_PER_RUN} Novi UniqueIDs ({len(bad)} are not)")
    run = Run.begin(RunKind.MEMBER, options)
    run.how_to_approve = ("in the Prefect UI, a custom run of this member run with approve = {plan} "
                          "(or let the full sync make the changes).")
    novi = saved(NoviCredentials, options.novi_block).get_client()
    mailman = saved(MailmanCredentials, options.mailman_block).get_client()
    heard(novi, mailman)
    with run.hold(wait=timedelta(seconds=wait_for_lock_s)):
        mailman.supported_version()
        found, missing = novi.records_around(ids, companies=any(
            rule.contacts_of_companies or rule.inheriting for rule in run.rules.lists))
        members = members_frame(list(found.values()), list(run.rules.novi.address_fields))
        # What a run that died mid-apply left intended on these lists is settled first, from reads
        # of its own addresses; what follows (the plan, the record) is this run's members' alone.
        leftover = sorted(run.leftover_keys())
        if leftover:
            run.settle_leftovers({lid: mailman.membership(lid, leftover) for lid in run.list_ids},
                                 read_moderators(mailman, run.ledger, run.rules, leftover))
        remembered = run.ledger.read(run.list_ids, novi_ids=list(members["novi_id"]),
                                     match_keys=list(members["match_key"].dropna()))
        remembered = run.with_stand_ins(remembered, members)  # erased people's opt-outs, without their address
        keys = sorted(set(members["match_key"].dropna()) | set(remembered["match_key"]))
        rosters = {lid: mailman.membership(lid, keys) for lid in run.list_ids}
        bans = read_bans(mailman, run.list_ids)
        run.settings = {lid: mailman.settings(lid) for lid in run.list_ids}  # who Mailman mails by itself
        requests = read_requests(mailman, run.list_ids)
        moderators = read_moderators(mailman, run.ledger, run.rules, keys)
        # Novi cannot be asked which companies name a person as their contact: whether someone
        # is one is judged by the full sync alone (a member run never removes on less).
        plan = plan_lists(mailman, members, rosters, run.rules, remembered, now=pd.Timestamp(run.started_at),
                              bans=bans, requests=requests, moderators=moderators, every_company=False)

        run.judge(plan, None)
        outcomes = run.apply(mailman, plan)
        done = (f"{len(ids) - len(missing)} members: {report.done_message(outcomes, run.dry_run)}"
                + (f"; {len(missing)} not found in Novi, left to the full sync" if missing else ""))
        state, message = run.verdict(outcomes, done)
        state, message = run.record(plan, outcomes, state, message, len(found), only_keys=keys)
        message = tell_staff(run, plan, outcomes, mailman, message)

    summary = run.summarise(plan, outcomes, state, message, novi_members=len(found), members=ids,
                            not_found=missing)
    report.publish_member(summary, outcomes)
    return run.finish(summary, outcomes, clients=(novi, mailman))
