"""Undo a run: the inverse of what it applied, from the ledger (tasks.core.undo).

The same machinery as a sync from the plan on: the lists' lock, the removal guards with
approval by fingerprint, the retried batch tasks, the ledger (the undo is a run of its own,
kind `undo`, whose changes say which run they undo), and a dry run first.
"""

# No `from __future__ import annotations`: Prefect builds each run's parameter model from these
# annotations, and a runner serving the flow could not resolve `Annotated` from a string.
from typing import Annotated

import pandas as pd
from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Completed, State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from tasks import report
from tasks.blocks import MailmanCredentials, NoviCredentials, saved
from tasks.core import guards
from tasks.core.planner import Plan
from tasks.core.rules import Rules, load_rules, parse_rules
from tasks.core.schema import FIGURE_COLUMNS, LEFT_ALONE_COLUMNS, MEMORY_COLUMNS, RunKind, RunState, Tag
from tasks.core.undo import plan_undo, to_put_back
from tasks.errors import BadParameter, SyncError
from tasks.mailman import read_bans
from tasks.core.members import members_frame
from tasks.run import MAX_WORKERS, Run, RunOptions, failed, heard, label, open_ledger, read_rosters

def undo_run_name() -> str:
    """An undo's run says what it undoes, in the runs list and in `history`: `undo-<run>`
    (`dry-run-undo-<run>` for a look first)."""
    parameters = flow_run.get_parameters() or {}
    return f"{'dry-run-' if parameters.get('dry_run', True) else ''}undo-{parameters.get('run', '')}"


@flow(name="undo-run", task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS), flow_run_name=undo_run_name)
def undo_run(
    run: str,
    dry_run: bool = True,
    rules_path: str | None = None,
    mailman_block: str = "mailman",
    ledger_block: str | None = None,
    override_guards: bool = False,
    approve: str | None = None,
    batch_size: Annotated[int, Field(ge=1, le=500)] = 100,
    workers: Annotated[int, Field(ge=1, le=MAX_WORKERS)] = 2,
    novi_block: str = "novi",
) -> State:
    """Undo what one run applied: re-subscribe the addresses it removed (silently, with the
    names and preferences they had), remove those it subscribed, release its holds, restore
    the names it changed. What changed since (by a later run, or by hand) is skipped and said.
    Whoever it would put back is read from Novi first: a removal that was their own choice
    (an opt-out), and anyone Novi no longer has at that address, or who has opted out or been
    deactivated since, is left off and said; whom it puts back is managed again.

    A dry run by default: read what it would do, then run it again with dry_run off. The next
    sync still plans from Novi: fix what caused the run first (Novi's data, or the rules), or
    the next sync makes the same changes again.

    Args:
        run: The run to undo: its name (as `novi-mailman history` and the Prefect UI show it) or its id.
        dry_run: Plan and report only; nothing is written anywhere (the default: look first).
        rules_path: A rules file whose guard settings (max_removals, max_removal_share) and protected
            addresses apply; empty: the defaults. Lists the file does not name get the defaults.
        mailman_block: Name of the saved MailmanCredentials block.
        ledger_block: Name of a saved LedgerDatabase block; empty: the default SQLite ledger on the worker.
        override_guards: Lift the removal guards for this undo only. Prefer approve.
        approve: Apply an undo the guards refused, if it is still that plan: its 12-digit fingerprint.
        batch_size: Changes per batch task (1-500).
        workers: Tasks in flight at once (1-8).
        novi_block: Name of the saved NoviCredentials block: whoever the undo would put back is read from Novi.
    """
    try:
        options = RunOptions(rules_path=rules_path, novi_block=novi_block, mailman_block=mailman_block,
                             ledger_block=ledger_block, dry_run=dry_run, override_guards=override_guards,
                             approve=approve, batch_size=batch_size, workers=workers)
        return _undo_run(run, options)
    except SyncError as exc:
        return failed(exc, novi_block, mailman_block)


def run_to_undo(ledger, ref: str) -> dict:
    """The run to undo, with every attempt's key; one that is not there, a name that names
    more than one run (Prefect's names repeat), or an undo, is refused."""
    found = ledger.find_runs(ref)
    if not found:
        raise BadParameter(f"no run {ref!r} in the ledger at {ledger.location}: give a run's name or id as "
                           "`novi-mailman history ADDRESS` or the Prefect UI shows it")
    if len(found) > 1:
        raise BadParameter(f"{len(found)} runs are named {ref!r}: give the id of the one to undo ("
                           + "; ".join(f"{run['flow_run_id']}, ended {run['ended_at']:%Y-%m-%d %H:%M}"
                                       for run in found) + ")")
    target = found[0]
    if target["kind"] == RunKind.UNDO:
        raise BadParameter(f"run {target['run_name']} is itself an undo: undoing an undo is refused (a sync "
                           "brings the lists back in step with Novi)")
    return target


def _rules_for(list_ids: list[str], rules_path: str | None) -> Rules:
    """The rules per list (guards, protected addresses, who opting out and deactivation keep
    off) and Novi's address fields: from the rules file where it names them, else the defaults.
    Never a welcome or goodbye mail: an undo puts people back as they were, unasked."""
    given = load_rules(rules_path) if rules_path else None
    named = {rule.list_id: rule for rule in given.lists} if given else {}
    defaults = parse_rules({"lists": [{"list_id": lid} for lid in list_ids]}, "the undo's lists")
    silent = [named.get(rule.list_id, rule).model_copy(update={"send_welcome": False, "send_goodbye": False})
              for rule in defaults.lists]
    return defaults.model_copy(update={"lists": silent, **({"novi": given.novi} if given else {})})


def _undo_run(ref: str, options: RunOptions) -> State:
    dry_run, ledger_block = options.dry_run, options.ledger_block
    ledger = open_ledger(ledger_block, create=not dry_run)  # a real undo upgrades an older ledger first
    target = run_to_undo(ledger, ref)
    name = target["run_name"]
    applied = ledger.applied_changes(target["keys"])  # every attempt's (a refusal, then the approved apply)
    label(Tag.UNDO, *[Tag.DRY_RUN] * dry_run)
    if applied.empty:
        message = f"Run {name} applied no change: nothing to undo"
        label(Tag.NO_CHANGES)
        return Completed(message=message, data=report.undo_summary(name, RunState.COMPLETED, message, dry_run=dry_run))
    list_ids = sorted(set(applied["list_id"]))
    run = Run(kind=RunKind.UNDO, rules=_rules_for(list_ids, options.rules_path), ledger=ledger, options=options)
    run.how_to_approve = (f"`novi-mailman undo {name} --apply --approve {{plan}}`"
                          f"{' --ledger-block ' + ledger_block if ledger_block else ''}, or in the Prefect UI a "
                          "custom run of undo-run/on-demand with approve = {plan} and dry_run off.")
    mailman = saved(MailmanCredentials, options.mailman_block).get_client()
    heard(mailman)
    with run.hold():
        mailman.supported_version()
        with run.phase("extract_rosters"):  # with who is held: the undo of a hold or a release reads it
            rosters = read_rosters(mailman, list_ids, options.workers, with_held=list_ids)
        if run.settle_leftovers(rosters):  # a run that died mid-apply: its attempt may be the undone run's
            target = run_to_undo(ledger, ref)
            applied = ledger.applied_changes(target["keys"])
        bans = read_bans(mailman, list_ids)
        with run.phase("extract_members"):
            novi = _records_now(options.novi_block, to_put_back(applied), run.rules)
        undo = plan_undo(applied, rosters, ledger.applied_since(target["ended_at"], list_ids), run_name=name,
                         novi=novi, rules=run.rules, bans=bans)
        plan = _as_plan(undo.changes)
        run.judge(plan, None, tripped=guards.undo_refusals(undo.changes, rosters, run.rules))
        outcomes = run.apply(mailman, plan)
        skipped = f"; {len(undo.skipped):,} changed since, left as they are" if len(undo.skipped) else ""
        done = report.done_message(outcomes, dry_run) if len(outcomes) else "nothing left to undo"
        state, message = run.verdict(outcomes, f"Undo of {name}: {done}{skipped}")
        state, message = run.record(plan, outcomes, state, message, None)
    summary = report.undo_summary(name, state, message, dry_run=dry_run, outcomes=outcomes, skipped=undo.skipped,
                                  guards=run.tripped, ledger=ledger.location)
    report.publish_undo(summary)
    return run.finish(summary, outcomes, clients=(mailman,))


def _records_now(novi_block: str, novi_ids: list[str], rules: Rules) -> pd.DataFrame:
    """The Novi records of these members as they are now (one read each), as a members frame;
    those Novi no longer has are not in it."""
    if not novi_ids:
        return members_frame([], list(rules.novi.address_fields))
    novi = saved(NoviCredentials, novi_block).get_client()
    heard(novi)
    return members_frame(list(novi.members_by_id(novi_ids).values()), list(rules.novi.address_fields))


def _as_plan(changes: pd.DataFrame) -> Plan:
    """The undo as a plan, for the run's guards, fingerprint, apply and ledger: only changes."""
    empty = pd.DataFrame()
    return Plan(changes=changes, left_alone=pd.DataFrame(columns=LEFT_ALONE_COLUMNS),
                figures=pd.DataFrame(columns=FIGURE_COLUMNS), quarantined=empty,
                memory=pd.DataFrame(columns=MEMORY_COLUMNS), bouncing=empty, wanting=empty)
