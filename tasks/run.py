"""What both flows share: the run's rules, ledger and lock, the bounded submit, the apply, the
guard verdict, the ledger record, and how an outcome becomes a final state and a message.

The full sync and the member sync differ in what they read; from the plan on they end the
same way, through one `Run`.
"""

from __future__ import annotations

import os
import shlex
import threading
import time
import uuid
from collections.abc import Callable, Collection, Hashable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from functools import partial

import httpx
import pandas as pd
from prefect import get_client, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed, wait
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State

from tasks.core import guards
from tasks.core.planner import Plan, plan_changes, settle
from tasks.core.rules import Rules, resolve_rules
from tasks.core.schema import (LEDGER_COLUMNS, PREFERENCE_COLUMNS, Action, Outcome, RunKind, RunState, RunSummary,
                               Tag, UndoSummary, approved_fingerprint, missing_as_none, note)
from tasks import logs, report
from tasks.errors import BadParameter, ChangesFailed, GuardRefused, ReadStopped, SyncError, what_now
from tasks.http import halting
from tasks.core.intents import settle_intents
from tasks.core.notices import open_doors, owner_notices
from tasks.blocks import open_ledger
from tasks import ledger_keeping, retention
from tasks.ledger_schema import HEAD
from tasks.ledger import Journal, Lease, Ledger, LedgerError, LockLost, RunRecord
from tasks.core.batching import batch_outcomes, batches, waves
from tasks.mailman import MailmanClient, apply_batch, extract_roster, read_preferences, with_preferences

MAX_WORKERS = 8  # the task runner's ceiling; the `workers` parameter picks at most this many
logs.quiet_expected_failures()  # every flow imports this module before the engine logs its run


def label(*tags: str, drop: Collection[str] = ()) -> None:
    """Add tags to this flow run (and take off those in `drop`). A label is not the run's work:
    a Prefect API that refuses it is logged, and the run goes on."""
    run_id = flow_run.get_id()
    if not run_id:
        return
    try:
        with get_client(sync_client=True) as client:
            current = client.read_flow_run(run_id).tags
            client.update_flow_run(run_id, tags=sorted((set(current) - set(drop)) | set(tags)))
    except httpx.HTTPError as exc:
        get_run_logger().warning("The run's tags could not be set: %s", type(exc).__name__)


def run_name() -> str:
    """A flow run's name: the one Prefect gave it (a worker's logs use it), said to be a dry run
    when it is one, so the runs list tells the two apart."""
    from prefect.utilities.names import generate_slug

    name = flow_run.get_name() or generate_slug(2)
    dry = bool((flow_run.get_parameters() or {}).get("dry_run"))
    return f"dry-run-{name}" if dry and not name.startswith("dry-run-") else name


def failed(error: SyncError, novi_block: str | None = None, mailman_block: str | None = None) -> State:
    """An expected failure as the run's final state: one line saying what, what was written and
    what to do, naming the run's blocks (the state message the UI shows, logged once at ERROR);
    the traceback is logged at debug level."""
    blocks = {"Novi": f"NoviCredentials block '{novi_block}'", "Mailman": f"MailmanCredentials block '{mailman_block}'"}
    message = f"{error} {what_now(error, blocks)}".strip()
    log = get_run_logger()
    log.error("%s", message)
    log.debug("The failure's traceback", exc_info=error)
    return Failed(message=message, data=error)


def heard(*clients) -> None:
    """A peer's retries said in the run's log as they happen (a minute of Novi's 500s was silent)."""
    for client in clients:
        client.http.tell = get_run_logger().warning


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
def make_plan(members: pd.DataFrame, rosters: dict[str, pd.DataFrame], rules: Rules, ledger: pd.DataFrame, *,
              now: pd.Timestamp, bans: dict[str, list[str]] | None = None,
              requests: dict[str, pd.DataFrame] | None = None,
              moderators: dict[str, pd.DataFrame] | None = None, every_company: bool = True) -> Plan:
    """The pure planner, as a task so its duration shows in the run."""
    return plan_changes(members, rosters, rules, ledger, now, bans, requests, moderators, every_company)


def plan_lists(mailman: MailmanClient, members: pd.DataFrame, rosters: dict[str, pd.DataFrame], rules: Rules,
               ledger: pd.DataFrame, *, now: pd.Timestamp, bans: dict[str, list[str]] | None = None,
               requests: dict[str, pd.DataFrame] | None = None,
               moderators: dict[str, pd.DataFrame] | None = None, every_company: bool = True) -> Plan:
    """The plan. Where it removes, holds or moves members whose preferences the roster read did
    not bring (`Plan.wanting`: a day's churn, not the roster), those are read, one call each,
    and the lists planned again with them. `every_company`: see `tasks.core.planner.plan_changes`."""
    context = {"now": now, "bans": bans, "requests": requests, "moderators": moderators,
               "every_company": every_company}
    plan = make_plan(members, rosters, rules, ledger, **context)
    if plan.wanting.empty:
        return plan
    read = read_preferences(mailman, plan.wanting)
    return make_plan(members, with_preferences(rosters, read), rules, ledger, **context)


def read_moderators(mailman: MailmanClient, ledger: Ledger, rules: Rules,
                    keys: Collection[str] | None = None) -> dict[str, pd.DataFrame]:
    """For each list whose rule takes moderators from positions: its moderator roster, and
    which of them (and which former ones) this tool made (`planner.moderator_changes`). With
    `keys` (a member run), only those addresses: the others are not this run's to judge."""
    lists = [rule.list_id for rule in rules.lists if rule.moderators_from_positions]
    if not lists:
        return {}
    made = ledger.moderators_made(lists)
    out = {}
    for list_id in lists:
        mine = made.loc[made["list_id"] == list_id, ["match_key", "email"]].assign(made=True)
        frame = mailman.moderators(list_id).merge(mine, on="match_key", how="outer", suffixes=("", "_made"))
        frame["email"] = frame["email"].fillna(frame.pop("email_made"))
        frame["made"] = frame["made"].fillna(False).astype(bool)
        out[list_id] = frame if keys is None else frame.loc[frame["match_key"].isin(list(keys))]
    return out


def apply_plan(client: MailmanClient, plan: Plan, rules: Rules, batch_size: int, workers: int,
               lease: Lease | None = None, journal: Journal | None = None) -> pd.DataFrame:
    """Apply every change in batch tasks; each change's outcome, including whole batches that failed.

    Each batch checks the run's `lease` before it writes: a run whose lock was taken over
    stops there (its remaining batches fail with `LockLost`). With a `journal`, each batch is
    in the ledger as intended before it is sent (a run killed mid-apply leaves nothing that
    nobody manages: the next run settles it, `Run.settle_leftovers`)."""
    changes = plan.changes
    if changes.empty:
        return changes.assign(outcome=pd.Series(dtype="string"), detail=pd.Series(dtype="string"))
    welcome = {r.list_id: r.send_welcome for r in rules.lists}
    goodbye = {r.list_id: r.send_goodbye for r in rules.lists}
    mail = ((changes["action"] == Action.SUBSCRIBE) & changes["list_id"].map(welcome)) | (
        (changes["action"] == Action.UNSUBSCRIBE) & changes["list_id"].map(goodbye))
    work = batches(changes.assign(mail=mail.astype(bool)), batch_size)

    def submit(item: tuple[str, pd.DataFrame]) -> PrefectFuture:
        action, rows = item
        # The batch task writes these as intended before it sends any: with what an intent keeps
        # (the address's key, its Novi id, why, the name it replaces).
        records = rows[["list_id", "email", "display_name", "member_id", "mail", "request", *PREFERENCE_COLUMNS,
                        "match_key", "novi_id", "reason", "previous", "account"]]
        records = missing_as_none(records).to_dict("records")
        return apply_batch.submit(client, action, records, lease, journal, uuid.uuid4().hex)

    ordered, results = [], []
    for wave in waves(work):  # bounded() waits for its wave: moderator roles go once the memberships are done
        results += [future.result(raise_on_failure=False) for future in bounded(submit, wave, workers)]
        ordered += wave
    return batch_outcomes(changes, ordered, results)


@task(name="read-ledger", cache_policy=NO_CACHE)
def read_ledger(ledger: Ledger, list_ids: list[str]) -> tuple[pd.DataFrame, dict[str, dict]]:
    """What earlier runs remember about these lists, and each list's figures at its last completed run."""
    return ledger.read(list_ids), ledger.last_figures(list_ids)


@task(name="record-ledger", cache_policy=NO_CACHE)
def record_ledger(ledger: Ledger, record: RunRecord, list_ids: list[str], plan: Plan,
                  outcomes: pd.DataFrame, lease: Lease | None, only_keys: list[str] | None = None,
                  before: pd.DataFrame | None = None, stand_ins: pd.DataFrame | None = None) -> int:
    """Store the lists' next state (as the changes actually turned out), the changes and the run.

    A refused run stores its row and the refused changes, but leaves what the ledger remembers
    of the lists as it was: the plan was judged untrustworthy, so is what it would remember.
    An undo leaves it too: it read no Novi, so it knows no next state; the next sync reads both
    sides and the roster the undo left."""
    if lease is not None:
        lease.check()
    memory = (None if record.state == RunState.REFUSED or record.kind == RunKind.UNDO
              else settle(plan.memory, outcomes))
    return ledger.record(record, list_ids, memory, outcomes, plan.figures, only_keys=only_keys, lease=lease,
                         before=before, stand_ins=stand_ins)


def read_together(reads: dict[Hashable, Callable[[], PrefectFuture]], workers: int,
                  halt: threading.Event) -> tuple[dict[Hashable, object], dict[Hashable, float]]:
    """Each read's result by its key, and the seconds from the start until each ended.

    At most `workers` reads are in flight, begun in the order given. The first to fail sets
    `halt` (tasks.http.halting): the reads in flight stop at their next request, none not yet
    begun is begun, and that failure is raised once every read has ended, so a run never plans
    from part of its sources and never leaves a read running behind it."""
    started = time.monotonic()
    futures: dict[Hashable, PrefectFuture] = {}
    ended: dict[Hashable, float] = {}
    in_flight: dict[PrefectFuture, Hashable] = {}
    failures: list[BaseException] = []

    def end(future: PrefectFuture) -> None:
        ended[in_flight.pop(future)] = time.monotonic() - started
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001 - every read's failure is kept; the first real one is raised
            failures.append(exc)
            halt.set()

    for key, read in reads.items():
        while len(in_flight) >= workers:
            end(next(as_completed(list(in_flight))))
        if halt.is_set():
            break
        futures[key] = read()
        in_flight[futures[key]] = key
    for future in as_completed(list(in_flight)):
        end(future)
    if failures:
        # A read stopped by the halt is not the cause: the read that set it is.
        raise next((f for f in failures if not isinstance(f, ReadStopped)), failures[0])
    return {key: future.result() for key, future in futures.items()}, ended


def roster_reads(mailman: MailmanClient, list_ids: Sequence[str],
                 with_held: Collection[str]) -> dict[str, Callable[[], PrefectFuture]]:
    """A read task per list, by list id, for `read_together`; held members searched for on the
    lists in `with_held` only (the search looks at every member)."""
    return {lid: partial(extract_roster.submit, mailman, lid, lid in with_held) for lid in list_ids}


def read_rosters(mailman: MailmanClient, list_ids: Sequence[str], workers: int,
                 with_held: Collection[str]) -> dict[str, pd.DataFrame]:
    """Every list's roster, at most `workers` read at once."""
    with halting(mailman.http) as halt:
        rosters, _ = read_together(roster_reads(mailman, list_ids, with_held), workers, halt)
    return rosters


def tell_staff(run: "Run", plan: Plan, outcomes: pd.DataFrame, mailman: MailmanClient, message: str) -> str:
    """A real run's change digest to the people its rules name (tasks.digest); the run's
    message, with what could not be sent."""
    if run.dry_run or not any(rule.digest for rule in run.rules.lists):
        return message
    from tasks.digest import send_digests  # prefect-email only where a digest is asked for

    with run.phase("digest"):
        problems = send_digests(run.rules, outcomes, plan.left_alone, plan.bouncing, plan.quarantined,
                                mailman, flow_run.get_name() or "local")
    return message + "".join(f" ({problem})" for problem in problems)


def flow_run_id() -> str:
    """This flow run's id (a retry keeps it), or one per process outside Prefect."""
    return str(flow_run.get_id() or uuid.uuid5(uuid.NAMESPACE_OID, str(os.getpid())))


def failed_message(failed: int, total: int) -> str:
    return f"{failed} of {total} changes failed; rerun to retry them"


def unrecorded_message(outcomes: pd.DataFrame, message: str, error: Exception) -> str:
    """What to say when the ledger could not store a run: whether Mailman was changed decides."""
    applied = int((outcomes["outcome"] == Outcome.APPLIED).sum())
    if applied:
        # Mailman already holds the changes, and the ledger their intents: the next run records
        # them from the roster (Run.settle_leftovers), never writes them twice.
        return (f"{applied} changes were applied to Mailman, but the ledger could not record them ({error}); "
                "a Retry or the next run records what was applied and completes the rest safely. The run's "
                "report below is the record of it")
    return f"{message.rstrip('.')}. The ledger could not record this run ({error})"


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """What a run was asked to do, as every flow's parameters come to it: built once, by keyword
    (the flows passed a dozen positional arguments, `dry_run` beside `override_guards`), and
    checked here. `approve` is kept as a checked fingerprint."""

    rules_path: str | None = None
    list_id: str | None = None
    novi_block: str = "novi"
    mailman_block: str = "mailman"
    ledger_block: str | None = None
    dry_run: bool = False
    override_guards: bool = False
    approve: str | None = None
    batch_size: int = 100
    workers: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= 500:
            raise BadParameter("batch_size must be between 1 and 500")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise BadParameter(f"workers must be between 1 and {MAX_WORKERS}")
        object.__setattr__(self, "approve", approved_fingerprint(self.approve, override_guards=self.override_guards))

    def sync_command(self) -> str:
        """The command line that runs this sync again, copy-ready (the same rules, list and blocks)."""
        words = ["novi-mailman", "sync"]
        words += ["--rules", self.rules_path] if self.rules_path else ["--list", self.list_id or ""]
        words += ["--novi-block", self.novi_block] if self.novi_block != "novi" else []
        words += ["--mailman-block", self.mailman_block] if self.mailman_block != "mailman" else []
        words += ["--ledger-block", self.ledger_block] if self.ledger_block else []
        return shlex.join(words)


@dataclass
class Run:
    """One run of either flow, from its rules to its final state."""

    kind: str
    rules: Rules
    ledger: Ledger
    options: RunOptions
    started: float = field(default_factory=time.monotonic)
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    lease: Lease | None = None
    phases: dict[str, float] = field(default_factory=dict)
    refusal: str | None = None         # the guards' verdict, when they stopped the writes
    tripped: list[str] = field(default_factory=list)
    overridden: bool = False
    approved: bool = False             # the operator approved this very plan (by its fingerprint)
    fingerprint: str = ""              # the plan's (guards.fingerprint)
    unrecorded: SyncError | None = None
    ledger_rows_written: int = 0      # the memory rows its record wrote (only those that changed)
    stand_ins: pd.DataFrame | None = None  # erased people's opt-outs it planned with (with_stand_ins)
    settings: dict[str, dict] = field(default_factory=dict)  # each list's settings, as read (tasks.core.notices)
    # How an operator applies a refused plan, with `{plan}` for its fingerprint (the flow knows
    # its own command line and whether it can wait for the UI).
    how_to_approve: str = "a custom run with approve = {plan}"

    @classmethod
    def begin(cls, kind: str, options: RunOptions) -> Run:
        started, started_at = time.monotonic(), datetime.now(timezone.utc)
        label(*[Tag.DRY_RUN] * options.dry_run, *[Tag.MEMBER_SYNC] * (kind == RunKind.MEMBER))
        rules = resolve_rules(options.rules_path, options.list_id)
        ledger = open_ledger(options.ledger_block, create=not options.dry_run)
        if ledger.upgraded_from:
            get_run_logger().info("The ledger at %s was upgraded from schema %s to %s", ledger.location,
                                  ledger.upgraded_from, HEAD)
        return cls(kind=kind, rules=rules, ledger=ledger, options=options, started=started, started_at=started_at)

    @property
    def dry_run(self) -> bool:
        return self.options.dry_run

    def keep_no_longer(self, reports_dir: str | None) -> None:
        """Retention, after a real full run (README: Privacy): what is older than the rules'
        `ledger.keep_history_days` goes from the ledger (these lists'), the reports folder and
        this deployment's runs' artifacts. It never fails the run: the next one tries again."""
        if self.dry_run or self.kind != RunKind.FULL:
            return
        from prefect.runtime import deployment

        days = self.rules.ledger.keep_history_days
        before = self.started_at - timedelta(days=days)
        log = get_run_logger()
        try:
            with self.phase("retention"):
                pruned = ledger_keeping.prune(self.ledger, days, self.list_ids, now=self.started_at)
                pruned["plan CSVs"] = retention.old_plan_files(report.reports_folder(reports_dir), before)
                with get_client(sync_client=True) as client:
                    pruned["artifacts"] = retention.old_artifacts(
                        client, before, uuid.UUID(deployment.id) if deployment.id else None)
        except (SyncError, OSError, httpx.HTTPError) as exc:
            log.warning("Retention (%d days) did not finish (%s); the next real run tries again", days,
                        type(exc).__name__)
            return
        if any(pruned.values()):
            log.info("Retention (%d days) removed: %s", days,
                     ", ".join(f"{n:,} {what}" for what, n in pruned.items() if n))

    def with_stand_ins(self, remembered: pd.DataFrame, members: pd.DataFrame) -> pd.DataFrame:
        """What the ledger remembers of these lists and, for erased people among `members` who
        had left one by themselves, rows that stand in for their opt-outs (never stored back)."""
        found = ledger_keeping.stand_ins(self.ledger, self.list_ids, members)
        key = ["list_id", "match_key"]
        found = found.loc[~found.set_index(key).index.isin(remembered.set_index(key).index)]  # a stored row wins
        self.stand_ins = found[[*key, "marker"]]
        return remembered if found.empty else pd.concat([remembered, found[LEDGER_COLUMNS]], ignore_index=True)

    def again(self, approve: str) -> None:
        """Start another attempt of this run, approving the plan `approve` (its fingerprint): a
        new clock for its phases, the same run."""
        self.options = replace(self.options, approve=approve)
        self.phases, self.refusal, self.tripped, self.unrecorded = {}, None, [], None
        self.started_at = datetime.now(timezone.utc)

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 2)

    @property
    def list_ids(self) -> list[str]:
        return [rule.list_id for rule in self.rules.lists]

    @contextmanager
    def hold(self, wait: timedelta = timedelta(0)) -> Iterator[Lease | None]:
        """The lists' lock for a real run (a dry run writes nothing, so it takes none). A run that
        could not take it is still part of the history."""
        with ExitStack() as stack:
            if not self.dry_run:
                try:
                    self.lease = stack.enter_context(self.ledger.lock(self.list_ids, flow_run_id(), wait=wait,
                                                                      tell=get_run_logger().info))
                except SyncError as exc:
                    self.record_failure(exc)
                    raise
            yield self.lease

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the time spent in the block to the run's `phases[name]`."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.monotonic() - start

    def leftover_keys(self) -> set[str]:
        """The addresses runs that died on these lists left intended: a member run reads them too."""
        if self.lease is None:
            return set()
        return set(self.ledger.leftover_intents(self.list_ids, self.lease)["match_key"])

    def settle_leftovers(self, rosters: dict[str, pd.DataFrame],
                         moderators: dict[str, pd.DataFrame] | None = None) -> bool:
        """Settle what runs that died on these lists left as intended (tasks.core.intents),
        against the rosters this run has just read: each is recorded as a crashed run with what
        it is known to have applied, and what it subscribed is managed. Whether anything was
        settled (the caller then reads the ledger again). A dry run only says it."""
        if self.lease is None:  # a dry run: it holds no lock, settles nothing, and says what waits
            intents = self.ledger.leftover_intents(self.list_ids, None)
            if not intents.empty:
                get_run_logger().warning("%d changes another run sent are not settled yet (a run under way, or "
                                         "one that died mid-apply: the next real run settles them); this dry "
                                         "run plans without them", len(intents))
            return False
        intents = self.ledger.leftover_intents(self.list_ids, self.lease)
        if intents.empty:
            return False
        verdicts = settle_intents(intents, rosters, moderators)
        for dead in self.ledger.settle_crashed(intents, verdicts):
            get_run_logger().warning("Run %s had died mid-apply: %d of its changes had reached Mailman and are "
                                     "recorded now, %d had not%s", dead["run_name"], dead["applied"],
                                     dead["not applied"],
                                     f", {dead['undecided']} could not be told" if dead["undecided"] else "")
        return True

    def record_of(self, state: str, message: str, novi_members: int | None) -> RunRecord:
        return RunRecord(run_id=flow_run_id(), run_name=flow_run.get_name() or "local",
                         started_at=self.started_at, ended_at=datetime.now(timezone.utc), state=state,
                         message=message, novi_members=novi_members, kind=self.kind)

    def record_failure(self, error: Exception) -> None:
        """A run that could not even plan is still part of the history (real runs)."""
        if not self.dry_run:
            self.ledger.record_failure(self.record_of(RunState.FAILED, str(error), None))

    def judge(self, plan: Plan, previous: dict[str, dict] | None, tripped: list[str] | None = None) -> None:
        """Ask the guards about the plan (or take their verdict, `tripped`, from an undo's own);
        a refusal stops every write, unless the operator approved this very plan (`approve`,
        its fingerprint) or lifted the guards for this run."""
        self.tripped = tripped if tripped is not None else guards.refusals(
            plan, self.rules, previous, few=self.kind == RunKind.MEMBER)
        self.fingerprint = guards.fingerprint(plan, self.rules)
        override_guards, approve = self.options.override_guards, self.options.approve
        self.overridden = bool(self.tripped and override_guards)
        self.approved = bool(self.tripped and not override_guards and approve == self.fingerprint)
        log = get_run_logger()
        if self.overridden:
            log.warning("Guards lifted for this run only, by the operator: %s", " ".join(self.tripped))
            label(Tag.OVERRIDDEN)
        elif self.approved:
            log.warning("Plan %s applied as approved by the operator: %s", self.fingerprint, " ".join(self.tripped))
            # what the run ended as: a filter on `refused` lists the runs that ended refused
            label(Tag.APPROVED, drop=[Tag.REFUSED])
        elif self.tripped:
            self.refusal = guards.refusal_message(self.tripped, self.fingerprint,
                                                  self.how_to_approve.format(plan=self.fingerprint),
                                                  approved=approve)
            label(Tag.REFUSED)

    def apply(self, client: MailmanClient, plan: Plan) -> pd.DataFrame:
        """The plan's changes with their outcomes: applied, or only planned (dry run) or refused."""
        if self.dry_run or self.refusal:
            return plan.changes.assign(outcome=Outcome.PLANNED if self.dry_run else Outcome.REFUSED, detail="")
        journal = Journal(self.ledger, self.lease, flow_run_id(), flow_run.get_name() or "local", self.kind,
                          self.started_at) if self.lease is not None else None
        with self.phase("apply"):
            return apply_plan(client, plan, self.rules, self.options.batch_size, self.options.workers, self.lease,
                              journal)

    def verdict(self, outcomes: pd.DataFrame, done: str) -> tuple[str, str]:
        """The run's state and message from its outcomes; `done` is the message of a completed run."""
        failed = int((outcomes["outcome"] == Outcome.FAILED).sum())
        if self.refusal:
            return RunState.REFUSED, self.refusal
        if failed:
            return RunState.FAILED, failed_message(failed, len(outcomes))
        if self.approved:  # the history says why a refused plan was applied
            done += f"; plan {self.fingerprint} applied as approved by the operator"
        return RunState.COMPLETED, done

    def record(self, plan: Plan, outcomes: pd.DataFrame, state: str, message: str, novi_members: int,
               only_keys: Sequence[str] | None = None, before: pd.DataFrame | None = None) -> tuple[str, str]:
        """Store a real run in the ledger; the state and message to report (a failed write fails
        the run, but its report is still published: it is then the only record of what was applied)."""
        if self.dry_run:
            return state, message
        try:
            with self.phase("record_ledger"):
                self.ledger_rows_written = record_ledger(
                    self.ledger, self.record_of(state, message, novi_members), self.list_ids, plan, outcomes,
                    self.lease, list(only_keys) if only_keys is not None else None, before, self.stand_ins)
        except (LedgerError, LockLost) as exc:
            self.unrecorded = type(exc)(unrecorded_message(outcomes, message, exc))
            return RunState.FAILED, str(self.unrecorded)
        return state, message

    def summarise(self, plan: Plan, outcomes: pd.DataFrame, state: str, message: str, *, novi_members: int,
                  plan_csv: str | None = None, members: list[str] | None = None,
                  not_found: list[str] | None = None) -> RunSummary:
        """The run's summary (tasks.report.summarise) with what this run knows of itself; a
        member run's with the members it was asked for."""
        summary = report.summarise(plan, outcomes, dry_run=self.dry_run, state=state, message=message,
                                   novi_members=novi_members, duration_s=self.elapsed(), plan_csv=plan_csv,
                                   ledger=self.ledger.location, guards=self.tripped,
                                   guards_overridden=self.overridden,
                                   approved=self.fingerprint if self.approved else None,
                                   owner_notices=owner_notices(plan.changes, self.settings, self.rules),
                                   open_doors=open_doors(self.settings))
        if members is not None:
            summary.update(members=members, not_found=not_found or [])
        return summary

    def finish(self, summary: RunSummary | UndoSummary, outcomes: pd.DataFrame, clients: Sequence = ()) -> State:
        """A run's final state from its outcome: the truth the UI shows (see README "Final state").

        Every outcome is expected, so none raises (a raise puts a traceback in the run's logs):
        a refusal ("Refused: …", tagged refused), failed changes or an unrecorded run a Failed
        state, each carrying its error with the summary attached (what the CLI prints); a dry run
        ("Dry run, nothing written …", tagged dry-run), a run with nothing to do ("No changes …",
        tagged no-changes) and the rest Completed, with the counts.
        """
        summary["duration_s"] = self.elapsed()  # now with the artifacts published
        if clients:  # how the time went and which calls were made: what an operator tunes, and
            # what the benchmark compares with the lower bound
            summary["phases_s"] = {name: round(seconds, 3) for name, seconds in self.phases.items()}
            summary["http_calls"] = dict(sorted(call for client in clients for call in client.http.calls.items()))
        summary["flow_run_id"] = flow_run_id()
        summary["plan_fingerprint"] = self.fingerprint
        summary["ledger_rows_written"] = self.ledger_rows_written
        if self.ledger.upgraded_from:
            note(summary, f"the ledger was upgraded from schema {self.ledger.upgraded_from} to {HEAD}")
        if self.lease is not None and self.lease.unreleased:
            get_run_logger().warning("The run's lock was not released: %s", self.lease.unreleased)
            note(summary, self.lease.unreleased)
        message = summary["message"]
        if self.unrecorded is not None:
            self.unrecorded.summary = summary
            return Failed(message=message, data=self.unrecorded)
        if self.refusal:
            get_run_logger().warning(message)  # the figures and how to approve, as a line of the log
            return Failed(message=message, data=GuardRefused(message, summary))
        if (outcomes["outcome"] == Outcome.FAILED).any():
            return Failed(message=message, data=ChangesFailed(message, summary))
        get_run_logger().info(message)
        if outcomes.empty and not self.dry_run:
            label(Tag.NO_CHANGES)
        # Prefect's own state names: the deployment page's Runs tab filters on them and hid ours
        # (Planned, Skipped, Refused). What a run was is in its message ("Dry run, nothing
        # written …", "No changes …", "Refused: …") and its tags; the alerts match the message.
        return Completed(message=message, data=summary)
