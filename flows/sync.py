"""The full sync: Novi members → plan → Mailman, for every list in the rules."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed, wait
from prefect.runtime import flow_run
from prefect.states import Completed
from prefect.task_runners import ThreadPoolTaskRunner

from tasks import report
from tasks.blocks import MailmanCredentials, NoviCredentials
from tasks.errors import ChangesFailed, GuardRefused, RulesError
from tasks.mailman import FAILED, MailmanClient, apply_batch, extract_roster
from tasks.novi import extract_members
from tasks.planner import Plan, plan
from tasks.rules import Rules, load_rules, single_list_rules

MAX_WORKERS = 8  # the task runner's ceiling; the `workers` parameter picks at most this many
REPORTS_DIR_ENV = "NOVI_MAILMAN_REPORTS"


def resolve_rules(rules_path: str | None, list_id: str | None) -> Rules:
    """The rules file, or the one-list shortcut; exactly one of the two."""
    if bool(rules_path) == bool(list_id):
        raise RulesError("give either a rules file or a single list id, not both and not neither")
    return load_rules(rules_path) if rules_path else single_list_rules(list_id)


def bounded(submit: Callable[[object], PrefectFuture], items: list, workers: int) -> list:
    """Submit one task per item with at most `workers` in flight; the futures, in item order."""
    futures: list[PrefectFuture] = []
    in_flight: list[PrefectFuture] = []
    for item in items:
        if len(in_flight) >= workers:
            in_flight.remove(next(as_completed(in_flight)))
        future = submit(item)
        futures.append(future)
        in_flight.append(future)
    wait(futures)
    return futures


@task(name="plan", cache_policy=NO_CACHE)
def make_plan(members: pd.DataFrame, rosters: dict[str, pd.DataFrame], rules: Rules) -> Plan:
    """The pure planner, as a task so its duration shows in the run."""
    return plan(members, rosters, rules)


def empty_source_refusal(the_plan: Plan, rules: Rules, novi_members: int) -> str | None:
    """Why the plan must not be applied because a list's eligible set is empty, or None."""
    empty = [rule.list_id for rule in rules.lists if not rule.allow_empty
             and int(the_plan.figures.loc[the_plan.figures["list_id"] == rule.list_id, "eligible"].iloc[0]) == 0]
    if not empty:
        return None
    return (f"No Novi member is eligible for {', '.join(empty)} ({novi_members:,} members read): an empty "
            "source is treated as an error, not as an instruction to empty the list. Nothing was written. "
            "If the list really should be empty, set `allow_empty: true` for it in the rules file.")


def batches(changes: pd.DataFrame, batch_size: int) -> list[tuple[str, str, pd.DataFrame]]:
    """Changes split by list and action into batches of at most `batch_size`."""
    out = []
    for (list_id, action), group in changes.groupby(["list_id", "action"], sort=False, observed=True):
        for start in range(0, len(group), batch_size):
            out.append((list_id, action, group.iloc[start:start + batch_size]))
    return out


def apply_plan(client: MailmanClient, the_plan: Plan, rules: Rules, batch_size: int, workers: int) -> pd.DataFrame:
    """Apply every change in batch tasks; each change's outcome, including whole batches that failed."""
    by_list = {rule.list_id: rule for rule in rules.lists}
    work = batches(the_plan.changes, batch_size)

    def submit(item: tuple[str, str, pd.DataFrame]) -> PrefectFuture:
        list_id, action, rows = item
        rule = by_list[list_id]
        mail = rule.send_welcome if action == "subscribe" else rule.send_goodbye if action == "unsubscribe" else False
        records = rows[["email", "display_name", "member_id"]].astype(object).where(rows.notna(), None)
        return apply_batch.submit(client, list_id, action, records.to_dict("records"), mail)

    futures = bounded(submit, work, workers)
    parts = []
    for (_, _, rows), future in zip(work, futures):
        result = future.result(raise_on_failure=False)
        if isinstance(result, BaseException):
            outcome = pd.DataFrame({"outcome": FAILED, "detail": str(result)}, index=rows.index)
        else:
            outcome = pd.DataFrame(result, index=rows.index)[["outcome", "detail"]]
        parts.append(rows.join(outcome))
    if not parts:
        return the_plan.changes.assign(outcome=pd.Series(dtype="string"), detail=pd.Series(dtype="string"))
    return pd.concat(parts).sort_index()


@flow(name="sync-lists", task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS))
def sync_lists(
    rules_path: str | None = None,
    list_id: str | None = None,
    novi_block: str = "novi",
    mailman_block: str = "mailman",
    dry_run: bool = False,
    batch_size: int = 100,
    workers: int = 2,
    reports_dir: str | None = None,
    table_rows: int = 500,
) -> dict:
    """Bring every list in the rules in step with Novi; returns the run summary.

    Reads Novi once and every roster, plans with pandas, refuses to write on an empty source,
    applies only the difference in retried batch tasks (unless `dry_run`), and leaves a
    summary, a table of changes and the full plan as artifacts.
    """
    log = get_run_logger()
    started = time.monotonic()
    if not 1 <= batch_size <= 500:
        raise ValueError("batch_size must be between 1 and 500")
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers must be between 1 and {MAX_WORKERS}")
    rules = resolve_rules(rules_path, list_id)
    novi = NoviCredentials.load(novi_block).get_client()
    mailman = MailmanCredentials.load(mailman_block).get_client()

    members = extract_members(novi, rules.novi.page_size, list(rules.novi.address_fields))
    log.info("Read %d Novi members (%d quarantined)", len(members), int(members["quarantine"].notna().sum()))
    list_ids = [rule.list_id for rule in rules.lists]
    roster_futures = bounded(lambda lid: extract_roster.submit(mailman, lid), list_ids, workers)
    rosters = {lid: future.result() for lid, future in zip(list_ids, roster_futures)}
    the_plan = make_plan(members, rosters, rules)
    log.info("Planned %d changes on %d lists", the_plan.count(), len(list_ids))

    refusal = empty_source_refusal(the_plan, rules, len(members))
    if dry_run or refusal:
        outcomes = the_plan.changes.assign(outcome=report.PLANNED if dry_run else "not applied", detail="")
    else:
        outcomes = apply_plan(mailman, the_plan, rules, batch_size, workers)

    failed = int((outcomes["outcome"] == FAILED).sum())
    total = len(outcomes)
    if refusal:
        state, message = "refused", refusal
    elif failed:
        state, message = "failed", f"{failed} of {total} changes failed; rerun to retry them"
    elif total == 0:
        state, message = "completed", "No changes: every list is already in step with Novi"
    else:
        verb = "would be made (dry run)" if dry_run else "applied"
        state, message = "completed", f"{total} changes {verb}"

    reports_dir_path = Path(reports_dir or os.environ.get(REPORTS_DIR_ENV, "reports"))
    rows = report.plan_rows(the_plan, outcomes)
    csv_path = report.write_plan_csv(rows, reports_dir_path, flow_run.get_name() or "local")
    summary = report.summarise(the_plan, outcomes, dry_run=dry_run, state=state, message=message,
                               novi_members=len(members), duration_s=time.monotonic() - started,
                               plan_csv=str(csv_path))
    report.publish(summary, outcomes, csv_path, table_rows)

    if refusal:
        raise GuardRefused(refusal, summary)
    if failed:
        raise ChangesFailed(message, summary)
    if total == 0:
        return Completed(message=message, name="Skipped", data=summary)
    log.info(message)
    return summary
