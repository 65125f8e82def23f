"""The full sync: Novi members → plan → Mailman, for every list in the rules."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed, wait
from prefect.runtime import flow_run
from prefect.states import Completed
from prefect.task_runners import ThreadPoolTaskRunner

from tasks import guards, report
from tasks.blocks import LedgerDatabase, MailmanCredentials, NoviCredentials
from tasks.errors import ChangesFailed, GuardRefused, RulesError, SyncError
from tasks.ledger import Lease, Ledger, LedgerError, LockLost, RunRecord
from tasks.mailman import APPLIED, FAILED, MailmanClient, apply_batch, extract_roster
from tasks.novi import extract_members
from tasks.planner import Plan, plan, settle
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
def make_plan(members: pd.DataFrame, rosters: dict[str, pd.DataFrame], rules: Rules, ledger: pd.DataFrame,
              now: pd.Timestamp) -> Plan:
    """The pure planner, as a task so its duration shows in the run."""
    return plan(members, rosters, rules, ledger, now)


def batches(changes: pd.DataFrame, batch_size: int) -> list[tuple[str, pd.DataFrame]]:
    """The changes as batches of one action each, of about `batch_size` rows.

    Subscribes of one address to several lists share a batch and run one after another:
    Mailman answers 400 (an IntegrityError) when two requests create the same new address at
    once (measured: 59 of 60 concurrent pairs). A name lives on the address, so each address
    is renamed once whatever the number of lists. Other actions are per list (mass
    unsubscribe is a per-list call; member ids belong to one list).
    """
    out: list[tuple[str, pd.DataFrame]] = []
    keyed = changes.assign(key=changes["email"].str.casefold())
    for action, group in keyed.groupby("action", sort=False):
        if action == "subscribe":
            group = group.sort_values(["key", "list_id"], kind="stable")
            new_address = group["key"].ne(group["key"].shift()).fillna(True).astype(int)
            address_number = new_address.cumsum() - 1
            out += [(action, rows) for _, rows in group.groupby(address_number // batch_size, sort=True)]
            continue
        if action == "rename":
            group = group.drop_duplicates("key")
            out += [(action, group.iloc[i:i + batch_size]) for i in range(0, len(group), batch_size)]
            continue
        for _, per_list in group.groupby("list_id", sort=True):
            out += [(action, per_list.iloc[i:i + batch_size]) for i in range(0, len(per_list), batch_size)]
    return out


def apply_plan(client: MailmanClient, the_plan: Plan, rules: Rules, batch_size: int, workers: int,
               lease: Lease | None = None) -> pd.DataFrame:
    """Apply every change in batch tasks; each change's outcome, including whole batches that failed.

    Each batch checks the run's `lease` before it writes: a run whose lock was taken over
    stops there (its remaining batches fail with `LockLost`)."""
    changes = the_plan.changes
    if changes.empty:
        return changes.assign(outcome=pd.Series(dtype="string"), detail=pd.Series(dtype="string"))
    welcome = {r.list_id: r.send_welcome for r in rules.lists}
    goodbye = {r.list_id: r.send_goodbye for r in rules.lists}
    mail = ((changes["action"] == "subscribe") & changes["list_id"].map(welcome)) | (
        (changes["action"] == "unsubscribe") & changes["list_id"].map(goodbye))
    work = batches(changes.assign(mail=mail.astype(bool)), batch_size)

    def submit(item: tuple[str, pd.DataFrame]) -> PrefectFuture:
        action, rows = item
        records = rows[["list_id", "email", "display_name", "member_id", "mail"]]
        records = records.astype(object).where(records.notna(), None).to_dict("records")
        return apply_batch.submit(client, action, records, lease)

    futures = bounded(submit, work, workers)
    done = []
    for (_, rows), future in zip(work, futures):
        result = future.result(raise_on_failure=False)
        if isinstance(result, BaseException):
            outcome = pd.DataFrame({"outcome": FAILED, "detail": str(result)}, index=rows.index)
        else:
            outcome = pd.DataFrame(result, index=rows.index)[["outcome", "detail"]]
        done.append(outcome.assign(action=rows["action"], key=rows["key"]))
    done = pd.concat(done)
    outcomes = changes.join(done[["outcome", "detail"]])
    # Renames were sent once per address: every list's rename row shares that outcome.
    renamed = done.loc[done["action"] == "rename"].set_index("key")[["outcome", "detail"]]
    is_rename = outcomes["action"] == "rename"
    if is_rename.any():
        keys = outcomes.loc[is_rename, "email"].str.casefold()
        outcomes.loc[is_rename, "outcome"] = keys.map(renamed["outcome"]).to_numpy()
        outcomes.loc[is_rename, "detail"] = keys.map(renamed["detail"]).to_numpy()
    return outcomes


def open_ledger(ledger_block: str | None, *, create: bool = True) -> Ledger:
    """The ledger a block names, else the default location (see tasks.ledger.default_url)."""
    return LedgerDatabase.load(ledger_block).get_ledger(create=create) if ledger_block else Ledger(create=create)


@task(name="read-ledger", cache_policy=NO_CACHE)
def read_ledger(ledger: Ledger, list_ids: list[str]) -> tuple[pd.DataFrame, dict[str, dict]]:
    """What earlier runs remember about these lists, and each list's figures at its last completed run."""
    return ledger.read(list_ids), ledger.last_figures(list_ids)


@task(name="record-ledger", cache_policy=NO_CACHE)
def record_ledger(ledger: Ledger, run: RunRecord, list_ids: list[str], the_plan: Plan,
                  outcomes: pd.DataFrame, lease: Lease | None) -> None:
    """Store the lists' next state (as the changes actually turned out), the changes and the run.

    A refused run stores its row and the refused changes, but leaves what the ledger remembers
    of the lists as it was: the plan was judged untrustworthy, so is what it would remember."""
    if lease is not None:
        lease.check()
    state = None if run.state == "refused" else settle(the_plan.memory, outcomes)
    ledger.record(run, list_ids, state, outcomes, the_plan.figures)


@contextmanager
def timed(phases: dict[str, float], name: str):
    """Add the time spent in the block to `phases[name]`."""
    start = time.monotonic()
    try:
        yield
    finally:
        phases[name] = phases.get(name, 0.0) + time.monotonic() - start


def _run_id() -> str:
    return str(flow_run.get_id() or uuid.uuid5(uuid.NAMESPACE_OID, str(os.getpid())))


def _run_record(started_at: datetime, state: str, message: str, novi_members: int | None,
                kind: str = "full") -> RunRecord:
    return RunRecord(run_id=_run_id(), run_name=flow_run.get_name() or "local",
                     started_at=started_at, ended_at=datetime.now(timezone.utc), state=state, message=message,
                     novi_members=novi_members, kind=kind)


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
) -> dict:
    """Bring every list in the rules in step with Novi; returns the run summary.

    Holds the lists' lock (real runs), reads Novi once, every roster and the ledger, plans
    with pandas, refuses to write when a safety guard trips (unless `override_guards`, for
    this run only), applies only the difference in retried batch tasks (unless `dry_run`),
    records the run in the ledger, and leaves a summary, a table of changes and the full plan
    as artifacts. A dry run takes no lock and writes nothing to the ledger.
    """
    started, started_at = time.monotonic(), datetime.now(timezone.utc)
    if not 1 <= batch_size <= 500:
        raise ValueError("batch_size must be between 1 and 500")
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers must be between 1 and {MAX_WORKERS}")
    rules = resolve_rules(rules_path, list_id)
    ledger = open_ledger(ledger_block, create=not dry_run)
    list_ids = [rule.list_id for rule in rules.lists]
    phases: dict[str, float] = {}
    lease = None
    with ExitStack() as held:
        try:
            if not dry_run:  # dry runs write nothing, so they need no lock
                lease = held.enter_context(ledger.lock(list_ids, _run_id()))
            novi = NoviCredentials.load(novi_block).get_client()
            mailman = MailmanCredentials.load(mailman_block).get_client()
            with timed(phases, "extract_members"):
                members = extract_members(novi, rules.novi.page_size, list(rules.novi.address_fields))
            with timed(phases, "extract_rosters"):
                # Who is held matters only where the rule holds lapsed members: the planner holds
                # and releases nowhere else (a hold elsewhere is a moderator's), so other lists
                # skip Mailman's slow held-member search.
                holds = {rule.list_id: rule.lapsed == "hold" for rule in rules.lists}
                roster_futures = bounded(lambda lid: extract_roster.submit(mailman, lid, holds[lid]), list_ids,
                                         workers)
                rosters = {lid: future.result() for lid, future in zip(list_ids, roster_futures)}
            with timed(phases, "read_ledger"):
                remembered, last_figures = read_ledger(ledger, list_ids)
        except SyncError as exc:
            if not dry_run:  # a run that could not even plan is still part of the history
                ledger.record_failure(_run_record(started_at, "failed", str(exc), None))
            raise
        return _reconcile(mailman, ledger, lease, rules, members, rosters, remembered, last_figures, started,
                          started_at, dry_run=dry_run, override_guards=override_guards, batch_size=batch_size,
                          workers=workers, reports_dir=reports_dir, table_rows=table_rows, phases=phases,
                          calls=lambda: {**novi.http.calls, **mailman.http.calls})


def _reconcile(mailman: MailmanClient, ledger: Ledger, lease: Lease | None, rules: Rules, members: pd.DataFrame,
               rosters: dict[str, pd.DataFrame], remembered: pd.DataFrame, last_figures: dict[str, dict], started: float,
               started_at: datetime, *, dry_run: bool, override_guards: bool, batch_size: int, workers: int,
               reports_dir: str | None, table_rows: int, phases: dict[str, float], calls):
    """Plan, guard, apply, record and report: the part of a run that follows the reads."""
    log = get_run_logger()
    list_ids = [rule.list_id for rule in rules.lists]
    log.info("Read %d Novi members (%d quarantined)", len(members), int(members["quarantine"].notna().sum()))
    with timed(phases, "plan"):
        the_plan = make_plan(members, rosters, rules, remembered, pd.Timestamp(started_at))
    log.info("Planned %d changes on %d lists", the_plan.count(), len(list_ids))

    tripped = guards.refusals(the_plan, rules, last_figures)
    refusal = guards.refusal_message(tripped) if tripped and not override_guards else None
    if tripped and override_guards:
        log.warning("Guards lifted for this run only, by the operator: %s", " ".join(tripped))
    if dry_run or refusal:
        outcomes = the_plan.changes.assign(outcome=report.PLANNED if dry_run else report.REFUSED, detail="")
    else:
        with timed(phases, "apply"):
            outcomes = apply_plan(mailman, the_plan, rules, batch_size, workers, lease)

    failed = int((outcomes["outcome"] == FAILED).sum())
    total = len(outcomes)
    if refusal:
        state, message = "refused", refusal
    elif failed:
        state, message = "failed", failed_message(failed, total)
    elif total == 0:
        state, message = "completed", "No changes: every list is already in step with Novi"
    else:
        verb = "would be made (dry run)" if dry_run else "applied"
        state, message = "completed", f"{total} changes {verb}"

    unrecorded: SyncError | None = None
    if not dry_run:
        try:
            with timed(phases, "record_ledger"):
                record_ledger(ledger, _run_record(started_at, state, message, len(members)), list_ids, the_plan,
                              outcomes, lease)
        except (LedgerError, LockLost) as exc:
            # The report is still published: it is then the only record of what was applied.
            unrecorded = type(exc)(unrecorded_message(outcomes, message, exc))
            state, message = "failed", str(unrecorded)

    with timed(phases, "report"):
        reports_dir_path = Path(reports_dir or os.environ.get(REPORTS_DIR_ENV, "reports"))
        rows = report.plan_rows(the_plan, outcomes)
        # The report is never what fails a run: Mailman may already hold its changes. A report
        # that cannot be written or published is said in the run's message and logged.
        try:
            csv_path = report.write_plan_csv(rows, reports_dir_path, flow_run.get_name() or "local")
        except OSError as exc:
            csv_path = None
            message += f" (the plan CSV could not be written to {reports_dir_path}: {exc.strerror or type(exc).__name__})"
            log.warning("The plan CSV could not be written: %s", type(exc).__name__)
        summary = report.summarise(the_plan, outcomes, dry_run=dry_run, state=state, message=message,
                                   novi_members=len(members), duration_s=time.monotonic() - started,
                                   plan_csv=str(csv_path) if csv_path else None, ledger=ledger.location,
                                   guards=tripped, guards_overridden=bool(tripped and override_guards))
        try:
            report.publish(summary, outcomes, csv_path, table_rows, the_plan.quarantined)
        except (httpx.HTTPError, ValueError) as exc:  # the Prefect API refused an artifact: said, not fatal
            message += f" (the run's artifacts could not be published: {type(exc).__name__})"
            summary["message"] = message
            log.error("The run's artifacts could not be published: %s", type(exc).__name__)
    # How the time went and which calls were made: what an operator tunes, and what the
    # benchmark compares with the lower bound.
    summary["phases_s"] = {name: round(seconds, 3) for name, seconds in phases.items()}
    summary["duration_s"] = round(time.monotonic() - started, 2)  # now with the artifacts published
    summary["http_calls"] = dict(sorted(calls().items()))
    summary["flow_run_id"] = _run_id()

    if unrecorded is not None:
        unrecorded.summary = summary
        raise unrecorded
    return finish(summary, message, refused=bool(refusal), failed=failed, total=total)


def unrecorded_message(outcomes: pd.DataFrame, message: str, error: Exception) -> str:
    """What to say when the ledger could not store a run: whether Mailman was changed decides."""
    applied = int((outcomes["outcome"] == APPLIED).sum())
    if applied:
        # Mailman already holds the changes; the next run adopts them, never writes them twice.
        return (f"{applied} changes were applied to Mailman, but the ledger could not record them ({error}); "
                "the next run adopts what was applied. The run's report below is the record of it")
    return f"{message.rstrip('.')}. The ledger could not record this run ({error})"


def failed_message(failed: int, total: int) -> str:
    return f"{failed} of {total} changes failed; rerun to retry them"


def finish(summary: dict, message: str, *, refused: bool, failed: int, total: int):
    """A run's final state from its outcome: the truth the UI shows (see README "Final state").

    Refused or failed runs raise with the summary attached (the CLI prints it); a run with
    nothing to do is a Completed state named Skipped; otherwise the summary is returned.
    """
    if refused:
        raise GuardRefused(message, summary)
    if failed:
        raise ChangesFailed(message, summary)
    if total == 0:
        return Completed(message=message, name="Skipped", data=summary)
    get_run_logger().info(message)
    return summary
