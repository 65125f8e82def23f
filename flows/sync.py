"""The full sync: Novi members → plan → Mailman, for every list in the rules."""

# No `from __future__ import annotations`: Prefect builds each run's parameter model from these
# annotations, and a runner serving the flow could not resolve `Annotated` from a string.
import os
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Annotated

import httpx
import pandas as pd
from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from tasks import approval, report
from tasks.blocks import MailmanCredentials, NoviCredentials, saved
from tasks.core.planner import unknown_custom_fields
from tasks.core.schema import LAPSE_HOLD, RunKind, approved_fingerprint
from tasks.errors import BadParameter, SyncError
from tasks.http import halting
from tasks.mailman import extract_bans, extract_requests
from tasks.novi import extract_members
from tasks.report import MAX_TABLE_ROWS, TABLE_ROWS
from tasks.run import (MAX_WORKERS, Run, failed, flow_run_id, heard, plan_lists, read_ledger, read_moderators,
                       read_together, roster_reads, run_name, sync_command, tell_staff)

REPORTS_DIR_ENV = "NOVI_MAILMAN_REPORTS"
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
        return _sync_lists(rules_path, list_id, novi_block, mailman_block, ledger_block, dry_run, override_guards,
                           approve, approval_wait_s, batch_size, workers, reports_dir, table_rows)
    except SyncError as exc:
        return failed(exc, novi_block, mailman_block)


def _sync_lists(rules_path: str | None, list_id: str | None, novi_block: str, mailman_block: str,
                ledger_block: str | None, dry_run: bool, override_guards: bool, approve: str | None,
                approval_wait_s: int, batch_size: int, workers: int, reports_dir: str | None,
                table_rows: int) -> State:
    if not 1 <= batch_size <= 500:
        raise BadParameter("batch_size must be between 1 and 500")
    if not 1 <= workers <= MAX_WORKERS:
        raise BadParameter(f"workers must be between 1 and {MAX_WORKERS}")
    approve = approved_fingerprint(approve, override_guards=override_guards)
    run = Run.begin(RunKind.FULL, rules_path, list_id, ledger_block, dry_run)
    waits = approval.can_wait() and approval_wait_s > 0 and not dry_run
    command = sync_command(rules_path, list_id, novi_block, mailman_block, ledger_block)
    # A deployment run's default ledger is the worker's file: the same command elsewhere would
    # plan against another ledger.
    where = " on the worker's machine" if approval.can_wait() and not ledger_block else ""
    run.how_to_approve = (("in the Prefect UI, Resume this run and tick approve; or" if waits else "")
                          + f"{where} `{command} --approve {{plan}}`"
                          + ("" if waits else ", or in the Prefect UI a custom run with approve = {plan}") + ".").strip()
    novi = saved(NoviCredentials, novi_block).get_client()
    mailman = saved(MailmanCredentials, mailman_block).get_client()
    heard(novi, mailman)
    wait_for_lock = timedelta(0)
    with approval.DeploymentSlot() as slot:  # kept from a pause to the run's end
        while True:
            with run.hold(wait=wait_for_lock):
                summary, outcomes = reconcile(run, novi, mailman, override_guards, approve, batch_size, workers,
                                              reports_dir, table_rows)
            if not (run.refusal and waits):
                break
            answer = approval.await_approval(run.tripped, run.fingerprint, approval_wait_s, command, slot, approve)
            if not answer:
                summary["message"] = ("Rejected by the operator. " if answer is False
                                      else f"No approval within {approval_wait_s:,} s. ") + summary["message"]
                break
            approve = run.fingerprint
            run.again()
            # An operator's approval comes in working hours, when member runs hold the lists for
            # seconds at a time: wait for them rather than lose the approval.
            wait_for_lock = APPROVED_LOCK_WAIT
        # How the time went and which calls were made: what an operator tunes, and what the
        # benchmark compares with the lower bound.
        summary["phases_s"] = {name: round(seconds, 3) for name, seconds in run.phases.items()}
        summary["http_calls"] = dict(sorted({**novi.http.calls, **mailman.http.calls}.items()))
        return run.finish(summary, outcomes)


def reconcile(run: Run, novi, mailman, override_guards: bool, approve: str | None, batch_size: int,
              workers: int, reports_dir: str | None, table_rows: int) -> tuple[dict, pd.DataFrame]:
    """One pass under the lists' lock: read both sides, plan, judge, apply, record and report."""
    log = get_run_logger()
    try:
        mailman.supported_version()
        members, rosters, bans, requests, (remembered, last_figures) = read_sources(run, novi, mailman, workers)
        with run.phase("read_moderators"):
            moderators = read_moderators(mailman, run.ledger, run.rules)
        if run.settle_leftovers(rosters, moderators):  # a run that died mid-apply: what it did, now known
            remembered = run.ledger.read(run.list_ids)
    except SyncError as exc:
        run.record_failure(exc)
        raise
    log.info("Read %d Novi members (%d quarantined)", len(members), int(members["quarantine"].notna().sum()))
    for problem in unknown_custom_fields(members, run.rules):  # a typo, said rather than an empty list
        log.warning("Rules: %s", problem)

    with run.phase("plan"):
        the_plan = plan_lists(mailman, members, rosters, run.rules, remembered, pd.Timestamp(run.started_at),
                              bans, requests, moderators)
    log.info("Planned %d changes on %d lists", the_plan.count(), len(run.list_ids))
    run.judge(the_plan, last_figures, override_guards, approve)
    outcomes = run.apply(mailman, the_plan, batch_size, workers)
    state, message = run.verdict(outcomes, report.done_message(outcomes, run.dry_run))
    # `remembered` is what the lists' rows were when read under this run's lock: only the rows
    # that changed are written
    state, message = run.record(the_plan, outcomes, state, message, len(members), before=remembered)
    message = tell_staff(run, the_plan, outcomes, mailman, message)
    # Published before the lock is released: a release that fails (the ledger down) must
    # not lose the report, which is then the only record of what was applied.
    with run.phase("report"):
        summary = publish_report(run, the_plan, outcomes, state, message, len(members), reports_dir, table_rows)
    return summary, outcomes


def read_sources(run: Run, novi, mailman, workers: int) -> tuple[pd.DataFrame, dict, dict, dict, tuple]:
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
             "ledger": partial(read_ledger.submit, run.ledger, run.list_ids)}
    with run.phase("read"), halting(novi.http, mailman.http) as halt:
        got, ended = read_together(reads, workers, halt)
    # Each from the reads' start to its end: they overlap, so they do not add up to `read`.
    run.phases["extract_members"] = ended["members"]
    run.phases["extract_rosters"] = max(ended[lid] for lid in run.list_ids)
    return (got["members"], {lid: got[lid] for lid in run.list_ids}, got["bans"], got["requests"],
            got["ledger"])


def publish_report(run: Run, the_plan, outcomes: pd.DataFrame, state: str, message: str, novi_members: int,
                   reports_dir: str | None, table_rows: int) -> dict:
    """The run's summary, its plan CSV and its artifacts.

    The report is never what fails a run: Mailman may already hold its changes. A report that
    cannot be written or published is said in the run's message and logged."""
    log = get_run_logger()
    reports_dir_path = Path(reports_dir or os.environ.get(REPORTS_DIR_ENV, "reports"))
    rows = report.plan_rows(the_plan, outcomes)
    try:
        csv_path = report.write_plan_csv(rows, reports_dir_path, flow_run.get_name() or "local", flow_run_id())
    except OSError as exc:
        csv_path = None
        message += f" (the plan CSV could not be written to {reports_dir_path}: {exc.strerror or type(exc).__name__})"
        log.warning("The plan CSV could not be written: %s", type(exc).__name__)
    summary = report.summarise(the_plan, outcomes, dry_run=run.dry_run, state=state, message=message,
                               novi_members=novi_members, duration_s=run.elapsed(),
                               plan_csv=str(csv_path) if csv_path else None, ledger=run.ledger.location,
                               guards=run.tripped, guards_overridden=run.overridden,
                               approved=run.fingerprint if run.approved else None)
    try:
        report.publish(summary, rows, table_rows, the_plan.quarantined, the_plan.bouncing)
    except (httpx.HTTPError, ValueError) as exc:  # the Prefect API refused an artifact: said, not fatal
        summary["message"] += f" (the run's artifacts could not be published: {type(exc).__name__})"
        log.error("The run's artifacts could not be published: %s", type(exc).__name__)
    return summary
