"""The full sync: Novi members → plan → Mailman, for every list in the rules."""

# No `from __future__ import annotations`: Prefect builds each run's parameter model from these
# annotations, and a runner serving the flow could not resolve `Annotated` from a string.
from datetime import timedelta
from functools import partial
from typing import Annotated

import pandas as pd
from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from tasks import approval, report
from tasks.blocks import MailmanCredentials, NoviCredentials, saved
from tasks.core.eligibility import unknown_custom_fields
from tasks.core.schema import LAPSE_HOLD, RunKind, RunSummary, note
from tasks.errors import SyncError
from tasks.http import halting
from tasks.mailman import extract_bans, extract_requests, extract_settings
from tasks.novi import extract_members
from tasks.report import MAX_TABLE_ROWS, TABLE_ROWS
from tasks.run import (MAX_WORKERS, Run, RunOptions, failed, flow_run_id, heard, plan_lists, read_ledger,
                       read_moderators, read_together, roster_reads, run_name, tell_staff)

APPROVAL_WAIT_S = 8 * 3600  # a refused nightly run waits for the working day to begin
APPROVED_LOCK_WAIT = timedelta(minutes=15)


@flow(name="sync-lists", task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS), flow_run_name=run_name)
def sync_lists(
    rules_path: str | None = None,
    list_id: str | None = None,
    novi_block: str = "novi",
    mailman_block: str = "mailman",
    ledger_block: str | None = None,
    dry_run: bool = False,
    override_guards: bool = False,
    approve: str | None = None,
    approval_wait_s: Annotated[int, Field(ge=0, le=7 * 24 * 3600)] = APPROVAL_WAIT_S,
    batch_size: Annotated[int, Field(ge=1, le=500)] = 100,
    workers: Annotated[int, Field(ge=1, le=MAX_WORKERS)] = 2,
    reports_dir: str | None = None,
    table_rows: Annotated[int, Field(ge=1, le=MAX_TABLE_ROWS)] = TABLE_ROWS,
) -> State:
    """Bring every list in the rules in step with Novi.

    Holds the lists' lock (real runs), reads Novi once, every roster and the ledger, plans
    with pandas, refuses to write when a safety guard trips, applies only the difference in
    retried batch tasks (unless `dry_run`), records the run in the ledger, and leaves a
    summary and each list's plan as artifacts. A dry run takes no lock and writes nothing to
    the ledger. A refused deployment run waits, paused, for an operator's approval of exactly
    the plan refused (see `approve`). Expected failures end the run Failed with one line
    saying what and what to do; their traceback is logged at debug level.

    Args:
        rules_path: Routing rules file (YAML), relative to the worker's directory. Give this or list_id.
        list_id: One list id (members@example.org) with every default rule, instead of rules_path.
        novi_block: Name of the saved NoviCredentials block.
        mailman_block: Name of the saved MailmanCredentials block.
        ledger_block: Name of a saved LedgerDatabase block; empty: the SQLite file at $NOVI_MAILMAN_LEDGER
            or ~/.novi-mailman/ledger.sqlite on the worker.
        dry_run: Plan and report only; nothing is written anywhere.
        override_guards: Lift the safety guards for this run only, whatever the plan. Prefer approve.
        approve: Apply a plan the guards refused, if a fresh plan is still that plan: the 12-digit
            fingerprint the refused run showed. A plan that moved is refused again, with its figures.
        approval_wait_s: How long a refused deployment run waits, paused, for an approval in its Resume
            form (seconds, up to 7 days; 0: it ends refused at once). The lists' lock is released meanwhile.
        batch_size: Changes per batch task (1-500).
        workers: Tasks in flight at once (1-8): the reads (Novi, the rosters, bans, requests, the ledger),
            then the write batches.
        reports_dir: Where the plan CSV is written on the worker; empty: $NOVI_MAILMAN_REPORTS or ./reports.
        table_rows: Rows of each list's plan table in the UI at most; failures, removals and holds are
            always all there, and everything is in the plan CSV.
    """
    try:
        options = RunOptions(rules_path=rules_path, list_id=list_id, novi_block=novi_block,
                             mailman_block=mailman_block, ledger_block=ledger_block, dry_run=dry_run,
                             override_guards=override_guards, approve=approve, batch_size=batch_size, workers=workers)
        return _sync_lists(options, approval_wait_s=approval_wait_s, reports_dir=reports_dir, table_rows=table_rows)
    except SyncError as exc:
        return failed(exc, novi_block, mailman_block)


def _sync_lists(options: RunOptions, *, approval_wait_s: int, reports_dir: str | None, table_rows: int) -> State:
    run = Run.begin(RunKind.FULL, options)
    waits = approval.can_wait() and approval_wait_s > 0 and not options.dry_run
    command = options.sync_command()
    # A deployment run's default ledger is the worker's file: the same command elsewhere would
    # plan against another ledger.
    where = " on the worker's machine" if approval.can_wait() and not options.ledger_block else ""
    run.how_to_approve = (("in the Prefect UI, Resume this run and tick approve; or" if waits else "")
                          + f"{where} `{command} --approve {{plan}}`"
                          + ("" if waits else ", or in the Prefect UI a custom run with approve = {plan}") + ".").strip()
    novi = saved(NoviCredentials, options.novi_block).get_client()
    mailman = saved(MailmanCredentials, options.mailman_block).get_client()
    heard(novi, mailman)
    wait_for_lock = timedelta(0)
    with approval.DeploymentSlot() as slot:  # kept from a pause to the run's end
        while True:
            with run.hold(wait=wait_for_lock):
                summary, outcomes = reconcile(run, novi, mailman, reports_dir=reports_dir, table_rows=table_rows)
            if not (run.refusal and waits):
                break
            answer = approval.await_approval(run.tripped, run.fingerprint, wait_s=approval_wait_s, command=command,
                                             slot=slot, approved=run.options.approve)
            if not answer:
                note(summary, "Rejected by the operator." if answer is False
                     else f"No approval within {approval_wait_s:,} s.", first=True)
                break
            run.again(approve=run.fingerprint)
            # An operator's approval comes in working hours, when member runs hold the lists for
            # seconds at a time: wait for them rather than lose the approval.
            wait_for_lock = APPROVED_LOCK_WAIT
        return run.finish(summary, outcomes, clients=(novi, mailman))


def reconcile(run: Run, novi, mailman, *, reports_dir: str | None,
              table_rows: int) -> tuple[RunSummary, pd.DataFrame]:
    """One pass under the lists' lock: read both sides, plan, judge, apply, record and report."""
    log = get_run_logger()
    try:
        mailman.supported_version()
        members, rosters, bans, requests, (remembered, last_figures) = read_sources(run, novi, mailman)
        with run.phase("read_moderators"):
            moderators = read_moderators(mailman, run.ledger, run.rules)
        if run.settle_leftovers(rosters, moderators):  # a run that died mid-apply: what it did, now known
            remembered = run.ledger.read(run.list_ids)
        remembered = run.with_stand_ins(remembered, members)  # erased people's opt-outs, without their address
    except SyncError as exc:
        run.record_failure(exc)
        raise
    log.info("Read %d Novi members (%d quarantined)", len(members), int(members["quarantine"].notna().sum()))
    for problem in unknown_custom_fields(members, run.rules):  # a typo, said rather than an empty list
        log.warning("Rules: %s", problem)

    with run.phase("plan"):
        plan = plan_lists(mailman, members, rosters, run.rules, remembered, now=pd.Timestamp(run.started_at),
                              bans=bans, requests=requests, moderators=moderators)
    log.info("Planned %d changes on %d lists", plan.count(), len(run.list_ids))
    run.judge(plan, last_figures)
    outcomes = run.apply(mailman, plan)
    state, message = run.verdict(outcomes, report.done_message(outcomes, run.dry_run))
    # `remembered` is what the lists' rows were when read under this run's lock: only the rows
    # that changed are written
    state, message = run.record(plan, outcomes, state, message, len(members), before=remembered)
    message = tell_staff(run, plan, outcomes, mailman, message)
    # Published before the lock is released: a release that fails (the ledger down) must
    # not lose the report, which is then the only record of what was applied.
    with run.phase("report"):
        rows = report.plan_rows(plan, outcomes)
        plan_csv, unwritten = report.save_plan(rows, reports_dir, flow_run.get_name() or "local", flow_run_id())
        summary = run.summarise(plan, outcomes, state, message, novi_members=len(members), plan_csv=plan_csv)
        if unwritten:
            note(summary, unwritten)
        report.publish(summary, rows, table_rows, plan.quarantined, plan.bouncing)
    run.keep_no_longer(reports_dir)
    return summary, outcomes


def read_sources(run: Run, novi, mailman) -> tuple[pd.DataFrame, dict, dict, dict, tuple]:
    """Novi's members, every list's roster, the bans, the pending requests and what the ledger
    remembers, read at the same time, at most `workers` tasks at once, Novi's first: it is
    mostly waiting on Novi's pace. One failing stops the others (tasks.run.read_together);
    nothing is planned from part of them.

    Who is held matters only where the rule holds lapsed members: the planner holds and
    releases nowhere else (a hold elsewhere is a moderator's), so other lists skip Mailman's
    slow held-member search."""
    held = {rule.list_id for rule in run.rules.lists if rule.lapsed == LAPSE_HOLD}
    reads = {"members": partial(extract_members.submit, novi, run.rules.novi.page_size,
                                list(run.rules.novi.address_fields)),
             **roster_reads(mailman, run.list_ids, held),  # keyed by list id: always with a dot
             "bans": partial(extract_bans.submit, mailman, run.list_ids),
             "requests": partial(extract_requests.submit, mailman, run.list_ids),
             "settings": partial(extract_settings.submit, mailman, run.list_ids),
             "ledger": partial(read_ledger.submit, run.ledger, run.list_ids)}
    with run.phase("read"), halting(novi.http, mailman.http) as halt:
        got, ended = read_together(reads, run.options.workers, halt)
    # Each from the reads' start to its end: they overlap, so they do not add up to `read`.
    run.phases["extract_members"] = ended["members"]
    run.phases["extract_rosters"] = max(ended[lid] for lid in run.list_ids)
    run.settings = got["settings"]
    return (got["members"], {lid: got[lid] for lid in run.list_ids}, got["bans"], got["requests"],
            got["ledger"])
