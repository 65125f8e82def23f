"""The full sync: Novi members → plan → Mailman, for every list in the rules."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pandas as pd
from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner

from tasks import report
from tasks.blocks import MailmanCredentials, NoviCredentials
from tasks.core.schema import LAPSE_HOLD, RunKind
from tasks.errors import SyncError
from tasks.mailman import extract_bans, extract_requests, extract_roster
from tasks.novi import extract_members
from tasks.run import MAX_WORKERS, Run, bounded, plan_lists, read_ledger

REPORTS_DIR_ENV = "NOVI_MAILMAN_REPORTS"


@flow(name="sync-lists", task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS))
def sync_lists(
    rules_path: str | None = None,
    list_id: str | None = None,
    novi_block: str = "novi",
    mailman_block: str = "mailman",
    ledger_block: str | None = None,
    dry_run: bool = False,
    override_guards: bool = False,
    batch_size: int = 100,
    workers: int = 2,
    reports_dir: str | None = None,
    table_rows: int = 500,
) -> dict | State:
    """Bring every list in the rules in step with Novi; returns the run summary.

    Holds the lists' lock (real runs), reads Novi once, every roster and the ledger, plans
    with pandas, refuses to write when a safety guard trips (unless `override_guards`, for
    this run only), applies only the difference in retried batch tasks (unless `dry_run`),
    records the run in the ledger, and leaves a summary, a table of changes and the full plan
    as artifacts. A dry run takes no lock and writes nothing to the ledger.
    """
    if not 1 <= batch_size <= 500:
        raise ValueError("batch_size must be between 1 and 500")
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers must be between 1 and {MAX_WORKERS}")
    log = get_run_logger()
    run = Run.begin(RunKind.FULL, rules_path, list_id, ledger_block, dry_run)
    with run.hold():
        try:
            novi = NoviCredentials.load(novi_block).get_client()
            mailman = MailmanCredentials.load(mailman_block).get_client()
            mailman.supported_version()
            with run.phase("extract_members"):
                members = extract_members(novi, run.rules.novi.page_size, list(run.rules.novi.address_fields))
            with run.phase("extract_rosters"):
                rosters = read_rosters(mailman, run, workers)
                bans = extract_bans(mailman, run.list_ids)
                requests = extract_requests(mailman, run.list_ids)
            with run.phase("read_ledger"):
                remembered, last_figures = read_ledger(run.ledger, run.list_ids)
        except SyncError as exc:
            run.record_failure(exc)
            raise
        log.info("Read %d Novi members (%d quarantined)", len(members), int(members["quarantine"].notna().sum()))

        with run.phase("plan"):
            the_plan = plan_lists(mailman, members, rosters, run.rules, remembered, pd.Timestamp(run.started_at),
                                  bans, requests)
        log.info("Planned %d changes on %d lists", the_plan.count(), len(run.list_ids))
        run.judge(the_plan, last_figures, override_guards)
        outcomes = run.apply(mailman, the_plan, batch_size, workers)
        state, message = run.verdict(outcomes, done_message(len(outcomes), dry_run))
        state, message = run.record(the_plan, outcomes, state, message, len(members))
        # Published before the lock is released: a release that fails (the ledger down) must
        # not lose the report, which is then the only record of what was applied.
        with run.phase("report"):
            summary = publish_report(run, the_plan, outcomes, state, message, len(members), reports_dir,
                                     table_rows)
    # How the time went and which calls were made: what an operator tunes, and what the
    # benchmark compares with the lower bound.
    summary["phases_s"] = {name: round(seconds, 3) for name, seconds in run.phases.items()}
    summary["http_calls"] = dict(sorted({**novi.http.calls, **mailman.http.calls}.items()))
    return run.finish(summary, outcomes)


def read_rosters(mailman, run: Run, workers: int) -> dict[str, pd.DataFrame]:
    """Every list's roster, at most `workers` read at once.

    Who is held matters only where the rule holds lapsed members: the planner holds and
    releases nowhere else (a hold elsewhere is a moderator's), so other lists skip Mailman's
    slow held-member search."""
    holds = {rule.list_id: rule.lapsed == LAPSE_HOLD for rule in run.rules.lists}
    futures = bounded(lambda lid: extract_roster.submit(mailman, lid, holds[lid]), run.list_ids, workers)
    return {lid: future.result() for lid, future in zip(run.list_ids, futures)}


def done_message(changes: int, dry_run: bool) -> str:
    if changes == 0:
        return "No changes: every list is already in step with Novi"
    if dry_run:
        return f"{changes} changes would be made (dry run)"
    return f"{changes} changes applied"


def publish_report(run: Run, the_plan, outcomes: pd.DataFrame, state: str, message: str, novi_members: int,
                   reports_dir: str | None, table_rows: int) -> dict:
    """The run's summary, its plan CSV and its artifacts.

    The report is never what fails a run: Mailman may already hold its changes. A report that
    cannot be written or published is said in the run's message and logged."""
    log = get_run_logger()
    reports_dir_path = Path(reports_dir or os.environ.get(REPORTS_DIR_ENV, "reports"))
    rows = report.plan_rows(the_plan, outcomes)
    try:
        csv_path = report.write_plan_csv(rows, reports_dir_path, flow_run.get_name() or "local")
    except OSError as exc:
        csv_path = None
        message += f" (the plan CSV could not be written to {reports_dir_path}: {exc.strerror or type(exc).__name__})"
        log.warning("The plan CSV could not be written: %s", type(exc).__name__)
    summary = report.summarise(the_plan, outcomes, dry_run=run.dry_run, state=state, message=message,
                               novi_members=novi_members, duration_s=run.elapsed(),
                               plan_csv=str(csv_path) if csv_path else None, ledger=run.ledger.location,
                               guards=run.tripped, guards_overridden=run.overridden)
    try:
        report.publish(summary, outcomes, csv_path, table_rows, the_plan.quarantined, the_plan.bouncing)
    except (httpx.HTTPError, ValueError) as exc:  # the Prefect API refused an artifact: said, not fatal
        summary["message"] += f" (the run's artifacts could not be published: {type(exc).__name__})"
        log.error("The run's artifacts could not be published: %s", type(exc).__name__)
    return summary
