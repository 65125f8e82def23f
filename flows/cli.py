"""The `novi-mailman` command line: save credentials, check connections, plan and sync."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from tasks.core.schema import Outcome, RunState, approved_fingerprint

# Prefect's telemetry is off unless the operator turns it on (DO_NOT_TRACK=0,
# PREFECT_SERVER_ANALYTICS_ENABLED=true): a server's telemetry row once reached the terminal as a
# "database is locked" traceback, and the client's usage events go to a third party unasked.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")  # Prefect's client-side usage events (prefect/_internal/analytics)

app = typer.Typer(help="Keep Mailman 3 lists in step with Novi AMS membership.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
# Peer and user text (a Novi error body, a reason stored in the ledger, an argument) is printed
# literally: markup off everywhere, so `[/]` or `[bold]` in data is text, never a crash or a style.
# Output for a pipe (cron mail, CI logs, `| tee`) is never cut to 80 columns: a table is as wide
# as its cells. A terminal keeps its own width.
PIPE_WIDTH = 10_000
err = Console(stderr=True, markup=False, highlight=False, soft_wrap=True,
              width=None if sys.stderr.isatty() else PIPE_WIDTH)
out = Console(markup=False, highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else PIPE_WIDTH)

EXIT_FAILED, EXIT_REFUSED = 1, 3
DEBUG = {"on": False}  # --debug: tracebacks for expected failures too


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks (they are always in the Prefect "
                                                               "logs of a run).")] = False) -> None:
    """Keep Mailman 3 lists in step with Novi AMS membership."""
    DEBUG["on"] = debug


def _prefect() -> None:
    """Before Prefect is imported: the Prefect server to talk to (PREFECT_API_URL, else the local
    one, started in the background on first use); then Prefect's own chatter kept off the
    terminal at the default level (`--debug` shows all of it)."""
    from tasks import local_server

    local_server.ensure(lambda line: err.print(line))
    if not DEBUG["on"]:
        _quiet_prefect()


# Prefect's background services log their shutdown ("Still processing items: 2 items
# remaining…") as warnings on loggers named after their class: not the user's business.
PREFECT_SERVICE_LOGGERS = ("EventsWorker", "APILogWorker")


def one_line(command):
    """Expected failures (a peer, the ledger, a rules file, a value given) as one clear line
    and exit 1; the traceback only with --debug. Anything else is a bug and shows as one."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from tasks.errors import SyncError

        try:
            return command(*args, **kwargs)
        except (SyncError, ValueError, OSError) as exc:
            if DEBUG["on"]:
                raise
            err.print(f"{command.__name__.replace('_', ' ')} failed: {exc}", style="red")
            raise typer.Exit(EXIT_FAILED) from None
        except Exception as exc:
            # The Prefect API failing under a command (a dropped connection, a proxy's error):
            # expected, one line. Only a loaded httpx can have raised it.
            httpx = sys.modules.get("httpx")
            if DEBUG["on"] or httpx is None or not isinstance(exc, httpx.HTTPError):
                raise
            from urllib.parse import urlsplit

            given = urlsplit(os.environ.get("PREFECT_API_URL") or "")
            # Shown without any user or password a URL may carry
            where = given._replace(netloc=given.hostname + (f":{given.port}" if given.port else "")).geturl() \
                if given.hostname else "the Prefect server"
            err.print(f"{command.__name__.replace('_', ' ')} failed: the Prefect API at {where} did not answer "
                      f"properly ({type(exc).__name__}); is it running and reachable?", style="red")
            raise typer.Exit(EXIT_FAILED) from None
    return wrapper


def _quiet_prefect() -> None:
    """Prefect's console handler prints a 25-40 line traceback for every failed run, before our
    own clear line. On the terminal keep its one-line message; the traceback still goes to the
    Prefect API's logs (the same record, formatted by another handler). Its services' shutdown
    chatter is not shown."""
    import logging

    from prefect.logging.configuration import ensure_logging_setup

    # Prefect sets its logging up on first use, which may come after this: a failed task's
    # traceback then reached the terminal in full. Set it up now; later setups only adjust it.
    ensure_logging_setup()
    for name in PREFECT_SERVICE_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)

    class OneLine(logging.Formatter):
        def __init__(self, inner: logging.Formatter | None) -> None:
            super().__init__()
            self.inner = inner or logging.Formatter()

        def format(self, record: logging.LogRecord) -> str:
            saved = record.exc_info, record.exc_text, record.stack_info
            record.exc_info, record.exc_text, record.stack_info = None, None, None
            try:
                return self.inner.format(record)
            finally:
                record.exc_info, record.exc_text, record.stack_info = saved

    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict) if name.startswith("prefect")]
    for logger in [logging.getLogger(), *loggers]:
        for handler in logger.handlers:
            if isinstance(handler, PrefectConsoleHandler) and not isinstance(handler.formatter, OneLine):
                handler.setFormatter(OneLine(handler.formatter))

NoviBlock = Annotated[str, typer.Option(help="Name of the saved NoviCredentials block.")]
MailmanBlock = Annotated[str, typer.Option(help="Name of the saved MailmanCredentials block.")]
RulesOpt = Annotated[Optional[str], typer.Option("--rules", help="Routing rules file (YAML).")]
BatchSize = Annotated[int, typer.Option(min=1, max=500, help="Changes per batch task (1-500).")]
Workers = Annotated[int, typer.Option(min=1, max=8,
                                      help="Tasks in flight at once (1-8): the reads, then the write batches.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the run summary as one JSON object on stdout.")]
LedgerBlock = Annotated[Optional[str], typer.Option(
    help="Name of a saved ledger block (e.g. PostgreSQL); default: the SQLite file at $NOVI_MAILMAN_LEDGER "
         "or ~/.novi-mailman/ledger.sqlite.")]
ListOpt = Annotated[Optional[str], typer.Option("--list", help="One list id, every default rule (instead of --rules).")]


def _secret(env_var: str, prompt: str) -> str:
    """A secret from the environment or a hidden prompt; never from a flag, never echoed."""
    value = os.environ.get(env_var)
    if value:
        return value
    if not sys.stdin.isatty():
        raise typer.BadParameter(f"set {env_var} (no terminal to prompt on)")
    return typer.prompt(prompt, hide_input=True)


@app.command()
@one_line
def blocks(
    novi_url: Annotated[str, typer.Option(help="Novi site URL, e.g. https://www.example.org")],
    mailman_url: Annotated[str, typer.Option(help="Mailman REST URL, e.g. http://127.0.0.1:8001")],
    mailman_user: Annotated[str, typer.Option(help="Mailman REST admin user.")] = "restadmin",
    novi_block: NoviBlock = "novi",
    mailman_block: MailmanBlock = "mailman",
) -> None:
    """Save both credentials as Prefect blocks (secrets from NOVI_API_KEY / MAILMAN_PASSWORD or a prompt)."""
    _prefect()
    from tasks.blocks import MailmanCredentials, NoviCredentials

    from pydantic import ValidationError

    api_key = _secret("NOVI_API_KEY", "Novi API key")
    password = _secret("MAILMAN_PASSWORD", "Mailman REST password")
    try:
        novi = NoviCredentials(site_url=novi_url, api_key=api_key)
        mailman = MailmanCredentials(rest_url=mailman_url, username=mailman_user, password=password)
    except ValidationError as exc:
        # pydantic's own text quotes the input (a URL with a password in it): name the field only.
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors())
        err.print(f"blocks not saved: {problems}", style="red")
        raise typer.Exit(EXIT_FAILED) from None
    novi.save(novi_block, overwrite=True)
    mailman.save(mailman_block, overwrite=True)
    err.print(f"Saved NoviCredentials '{novi_block}' and MailmanCredentials '{mailman_block}'.")


@app.command()
@one_line
def check(novi_block: NoviBlock = "novi", mailman_block: MailmanBlock = "mailman",
          rules: RulesOpt = None) -> None:
    """Test both connections, each on its own line: Novi's member total, Mailman's version and lists.

    A side that refuses connections fails after one short retry: a person is waiting."""
    from tasks.core.rules import load_rules

    wanted = load_rules(rules) if rules else None
    _prefect()
    from tasks.blocks import MailmanCredentials, NoviCredentials, saved
    from tasks.errors import SyncError
    from tasks.mailman import OLDEST_TESTED, untested

    def novi_side() -> None:
        client = saved(NoviCredentials, novi_block).get_client()
        client.http.interactive()
        out.print(f"Novi: connected, {client.member_total():,} member records")

    def mailman_side() -> None:
        client = saved(MailmanCredentials, mailman_block).get_client()
        client.http.interactive()
        version = client.supported_version()
        lists = client.list_ids()
        out.print(f"Mailman {version}: connected, {len(lists)} lists: {', '.join(lists) or '(none)'}")
        if untested(version):
            err.print(f"Mailman {version} is supported but older than {'.'.join(map(str, OLDEST_TESTED))}, "
                      "the oldest the tests run against")
        if wanted:
            missing = [r.list_id for r in wanted.lists if r.list_id not in lists]
            if missing:
                raise SyncError(f"lists in {rules} that Mailman does not have: {', '.join(missing)}")
            out.print(f"Rules {rules}: every list exists")
            from tasks.core.notices import LIST_SETTINGS, OPEN_DOORS

            for rule in wanted.lists:  # whom Mailman mails by itself when the sync changes the list
                said = client.settings(rule.list_id)
                out.print(f"{rule.list_id}: " + ", ".join(f"{name} {said[name]}" for name in LIST_SETTINGS)
                          + ("; each subscribe the sync makes sends its owners a notice" if
                             said["admin_notify_mchanges"] is True else ""))
                if said["subscription_policy"] in OPEN_DOORS:
                    err.print(f"{rule.list_id}: anyone can join without Novi (subscription_policy "
                              f"{said['subscription_policy']}); set it to moderate so that members come from Novi")

    failed = []
    for side, test in (("Novi", novi_side), ("Mailman", mailman_side)):
        try:
            test()
        except SyncError as exc:
            if DEBUG["on"]:
                raise
            err.print(f"{side}: {exc}", style="red")
            failed.append(side)
    if failed:
        raise typer.Exit(EXIT_FAILED)


def _run(*, dry_run: bool, rules: str | None, list_id: str | None, novi_block: str, mailman_block: str,
         ledger_block: str | None, batch_size: int, workers: int, as_json: bool,
         override_guards: bool = False, approve: str | None = None) -> None:
    from tasks.core.rules import resolve_rules

    with _before_the_run(as_json):
        resolve_rules(rules, list_id)  # a mistyped path is one line before Prefect starts, not a failed run
        _prefect()
    from tasks.blocks import LedgerDatabase, MailmanCredentials, NoviCredentials, checked_for_the_run, saved

    with checked_for_the_run():
        with _before_the_run(as_json):
            # A missing block, or a Prefect server that does not answer, is one line before a
            # run starts; the run then takes the blocks loaded here rather than load them again.
            for block_type, name in ((NoviCredentials, novi_block), (MailmanCredentials, mailman_block),
                                     (LedgerDatabase, ledger_block)):
                if name:
                    saved(block_type, name, keep=True)
        from flows.sync import sync_lists

        if DEBUG["on"]:  # an expected failure's traceback is logged at debug level by the flow
            import logging

            logging.getLogger("prefect.flow_runs").setLevel(logging.DEBUG)
        try:
            state = sync_lists(rules_path=rules, list_id=list_id, novi_block=novi_block, mailman_block=mailman_block,
                               ledger_block=ledger_block, dry_run=dry_run, override_guards=override_guards,
                               approve=approve, batch_size=batch_size, workers=workers, return_state=True)
        except RuntimeError as exc:  # Prefect's own: "Failed to reach API at …" before the run could start
            if DEBUG["on"]:
                raise
            err.print(f"the run could not start: {exc}", style="red")
            raise typer.Exit(EXIT_FAILED) from None
    summary, code = _summary_of(state)
    if as_json:
        print(json.dumps(summary, sort_keys=True))
    else:
        _show(summary)
    raise typer.Exit(code)


@contextlib.contextmanager
def _before_the_run(as_json: bool):
    """What is checked before a run starts: an expected failure is one line (with --json, one
    object on stdout, as a run's summary would be)."""
    from tasks.errors import SyncError

    try:
        yield
    except SyncError as exc:
        if not as_json or DEBUG["on"]:
            raise
        print(json.dumps({"state": RunState.FAILED, "message": str(exc)}, sort_keys=True))
        raise typer.Exit(EXIT_FAILED) from None


def _summary_of(state) -> tuple[dict, int]:
    """A finished run's summary and exit status: 0, 1 (failed) or 3 (refused)."""
    from tasks.errors import GuardRefused

    if state.is_completed():
        return state.result(), 0
    exc = state.result(raise_on_failure=False)
    summary = getattr(exc, "summary", None) or {"state": RunState.FAILED, "message": state.message or str(exc)}
    return summary, EXIT_REFUSED if isinstance(exc, GuardRefused) else EXIT_FAILED


def _show(summary: dict) -> None:
    colour = {RunState.COMPLETED: "green", RunState.REFUSED: "yellow"}.get(summary.get("state"), "red")
    if summary.get("lists"):
        table = Table(title="Dry run: nothing written" if summary.get("dry_run") else "Sync")
        from tasks.report import shown_actions

        actions = shown_actions(summary["lists"])
        for column in ["list", "eligible", "on roster", "in step", *actions, Outcome.FAILED]:
            table.add_column(column, justify="left" if column == "list" else "right")
        for item in summary["lists"]:
            table.add_row(item["list_id"], f"{item['eligible']:,}", f"{item['roster']:,}", f"{item['in_step']:,}",
                          *[f"{item['changes'].get(a, 0):,}" for a in actions],
                          f"{item['outcomes'].get(Outcome.FAILED, 0):,}")
        out.print(table)
        out.print(f"Novi members: {summary['novi_members']:,} · quarantined: {summary['quarantined']:,}")
        if summary.get("plan_csv"):
            out.print(f"Full plan: {summary['plan_csv']}")
    out.print(str(summary.get("message")), style=colour)


@app.command()
@one_line
def plan(rules: RulesOpt = None, list_id: ListOpt = None, novi_block: NoviBlock = "novi",
         mailman_block: MailmanBlock = "mailman", ledger_block: LedgerBlock = None,
         batch_size: BatchSize = 100, workers: Workers = 2, as_json: AsJson = False,
         ) -> None:
    """Dry run: read both sides and the ledger, plan and report; write nothing anywhere."""
    _run(dry_run=True, rules=rules, list_id=list_id, novi_block=novi_block, mailman_block=mailman_block,
         ledger_block=ledger_block, batch_size=batch_size, workers=workers, as_json=as_json)


@app.command()
@one_line
def sync(rules: RulesOpt = None, list_id: ListOpt = None, novi_block: NoviBlock = "novi",
         mailman_block: MailmanBlock = "mailman", ledger_block: LedgerBlock = None,
         batch_size: BatchSize = 100, workers: Workers = 2, as_json: AsJson = False,
         approve: Annotated[Optional[str], typer.Option(
             "--approve", metavar="FINGERPRINT",
             help="Apply a plan the guards refused, if it is still that plan: the fingerprint the refused run "
                  "printed. A plan that changed since is refused again, with its new fingerprint.")] = None,
         override_guards: Annotated[bool, typer.Option(
             "--override-guards", help="Lift the safety guards for this run only, whatever the plan.")] = False,
         ) -> None:
    """Apply: bring every list in the rules in step with Novi."""
    approve = approved_fingerprint(approve, override_guards=override_guards)
    _run(dry_run=False, rules=rules, list_id=list_id, novi_block=novi_block, mailman_block=mailman_block,
         ledger_block=ledger_block, batch_size=batch_size, workers=workers, as_json=as_json,
         override_guards=override_guards, approve=approve)


@app.command()
def relay(
    host: Annotated[str, typer.Option(help="Address to listen on; put a TLS proxy in front for the internet.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8787,
    deployment: Annotated[str, typer.Option(help="The deployment that syncs a batch of members.")] =
        "sync-member/webhook-member-sync",
    full_sync_deployment: Annotated[str, typer.Option(help="The deployment a bulk import starts instead.")] =
        "sync-lists/nightly-full-sync",
    full_sync_above: Annotated[int, typer.Option(help="More members due than this: one full sync instead.")] = 1000,
    window: Annotated[float, typer.Option(help="Seconds a member must be quiet before its run starts.")] = 30.0,
    max_batch: Annotated[int, typer.Option(help="Members per member-sync run at most.")] = 200,
) -> None:
    """Receive Novi webhooks (POST /novi/TOKEN) and start debounced runs; token from NOVI_MAILMAN_RELAY_TOKEN."""
    _prefect()
    from tasks import relay as the_relay

    try:
        the_relay.start(token=os.environ.get("NOVI_MAILMAN_RELAY_TOKEN", ""), host=host, port=port,
                        deployment=deployment, full_sync_deployment=full_sync_deployment,
                        full_sync_above=full_sync_above, window=window, max_batch=max_batch, say=err.print)
    except the_relay.RelayError as exc:
        err.print(f"relay not started: {exc}", style="red")
        raise typer.Exit(EXIT_FAILED) from None
    except RuntimeError as exc:  # the hand-off loop failed: serve() stopped the relay
        err.print(str(exc), style="red")
        raise typer.Exit(EXIT_FAILED) from None


@app.command()
@one_line
def unlock(list_id: Annotated[str, typer.Argument(help="The list whose lock to release.")],
           ledger_block: LedgerBlock = None,
           force: Annotated[bool, typer.Option(
               "--force", help="Release it even though its run looks alive (its process on this machine, or a "
                               "heartbeat in the last 10 minutes): only when you know that run died.")] = False) -> None:
    """Release a list's lock left by a run that died (runs release their own locks); a live run's is refused."""
    from tasks.core.schema import dot_list_id

    released = _ledger(ledger_block).unlock(dot_list_id(list_id), force=force)
    out.print(f"Released {released} lock(s) on {dot_list_id(list_id)}." if released
              else f"{dot_list_id(list_id)} was not locked.")


@app.command()
@one_line
def history(address: Annotated[str, typer.Argument(help="The email address to look up.")],
            ledger_block: LedgerBlock = None, as_json: AsJson = False) -> None:
    """What happened to an address, across lists and runs, newest first (from the ledger)."""
    from tasks.history import AddressHistory, run_label, standing

    ledger = _ledger_to_read(ledger_block)
    history = AddressHistory.read(ledger, address)
    if as_json:
        print(json.dumps(history.as_json()))
        return
    out.print(f"Ledger: {history.ledger}")
    for item in history.lists:
        out.print(standing(item))
    if history.changes.empty:
        out.print(f"No change recorded for {address}."
                  + ("" if ledger.exists else " No run has been recorded on this machine yet."))
        return
    _print_changes(f"History of {address}, newest first", history.changes, ("list", "list_id"), run_label)


@app.command("list-history")
@one_line
def list_history(list_id: Annotated[str, typer.Argument(help="The list (members@example.org or members.example.org).")],
                 days: Annotated[int, typer.Option(min=1, max=366, help="How far back to look, in days.")] = 7,
                 ledger_block: LedgerBlock = None, as_json: AsJson = False) -> None:
    """What changed on one list over the last days, newest first, by every kind of run (from the ledger)."""
    from tasks.history import ListHistory, run_and_kind

    ledger = _ledger_to_read(ledger_block)
    history = ListHistory.last_days(ledger, list_id, days)
    if as_json:
        print(json.dumps(history.as_json()))
        return
    out.print(f"Ledger: {history.ledger}")
    out.print(history.summary() + ("" if ledger.exists else ". No run has been recorded on this machine yet."))
    if history.changes.empty:
        return
    _print_changes(f"{history.list_id}, newest first", history.changes, ("address", "email"), run_and_kind)


def _print_changes(title: str, changes, second: tuple[str, str], run_of) -> None:
    """A history's changes as one table, newest first: when, the list or the address (`second`:
    its heading and field), what, with what outcome, why, and the run (`run_of`)."""
    heading, field = second
    table = Table(title=title)
    for column in ("when", heading, "action", "outcome", "reason", "run"):
        table.add_column(column)
    for row in changes.itertuples():
        table.add_row(row.at.strftime("%Y-%m-%d %H:%M"), getattr(row, field), row.action, row.outcome,
                      row.reason or "", run_of(row))
    out.print(table)


def _ledger(ledger_block: str | None, *, create: bool = False):
    """The ledger a command reads (or, with `create`, upgrades or makes): a block's, from the
    commands' Prefect server; else the default one, without starting Prefect at all (history
    and unlock answer at once)."""
    if not ledger_block:
        from tasks.ledger import Ledger

        return Ledger(create=create)
    _prefect()  # a block lives on a Prefect server: the one the commands use, not a temporary one
    from tasks.blocks import open_ledger

    return open_ledger(ledger_block, create=create)


def _ledger_to_read(ledger_block: str | None):
    """The ledger a history command reads; one that was named and is not there is a typo, said."""
    from tasks.ledger import LEDGER_ENV, LedgerError

    ledger = _ledger(ledger_block)
    if not ledger.exists and (ledger_block or os.environ.get(LEDGER_ENV)):
        raise LedgerError(f"no ledger at {ledger.location}: no run has stored one there (check "
                          f"{'the LedgerDatabase block ' + repr(ledger_block) if ledger_block else LEDGER_ENV})")
    return ledger


@app.command()
@one_line
def undo(run: Annotated[str, typer.Argument(help="The run to undo: its name (as `history` and the Prefect UI "
                                                 "show it) or its id.")],
         apply: Annotated[bool, typer.Option("--apply", help="Apply the undo (without it: a dry run, "
                                                               "nothing written).")] = False,
         rules: RulesOpt = None, mailman_block: MailmanBlock = "mailman", ledger_block: LedgerBlock = None,
         novi_block: NoviBlock = "novi",
         approve: Annotated[Optional[str], typer.Option(
             "--approve", metavar="FINGERPRINT",
             help="Apply an undo the guards refused, if it is still that plan.")] = None,
         override_guards: Annotated[bool, typer.Option(
             "--override-guards", help="Lift the removal guards for this undo only.")] = False,
         batch_size: BatchSize = 100, workers: Workers = 2, as_json: AsJson = False) -> None:
    """Undo what one run applied (a dry run unless --apply): re-subscribe whom it removed, with
    their names and preferences and no mail; remove whom it subscribed; release its holds; restore
    the names it changed. What changed since is skipped and said, and so is anyone Novi now keeps
    off (an opt-out, a deactivation, a deleted record or another address)."""
    approve = approved_fingerprint(approve, override_guards=override_guards)
    with _before_the_run(as_json):
        if rules:
            from tasks.core.rules import load_rules

            load_rules(rules)
        _prefect()
        from flows.undo import run_to_undo
        from tasks.blocks import MailmanCredentials, NoviCredentials, open_ledger, saved

        saved(MailmanCredentials, mailman_block)
        saved(NoviCredentials, novi_block)
        run_to_undo(open_ledger(ledger_block, create=False), run)  # a wrong name is one line, before a run
    from flows.undo import undo_run

    state = undo_run(run=run, dry_run=not apply, rules_path=rules, mailman_block=mailman_block,
                     ledger_block=ledger_block, novi_block=novi_block, override_guards=override_guards, approve=approve,
                     batch_size=batch_size, workers=workers, return_state=True)
    summary, code = _summary_of(state)
    if as_json:
        print(json.dumps(summary, sort_keys=True))
        raise typer.Exit(code)
    if summary.get("changes"):
        table = Table(title=f"{'Dry run: u' if summary.get('dry_run') else 'U'}ndo of {summary.get('undoes')}")
        for column in ("list", "action", "email", "name", "outcome", "reason"):
            table.add_column(column)
        for change in summary["changes"]:
            table.add_row(change["list_id"], change["action"], change["email"], change.get("display_name") or "",
                          change.get("outcome") or "", change.get("reason") or "")
        out.print(table)
    for skipped in summary.get("skipped", []):
        out.print(f"Left as it is: {skipped['email']} on {skipped['list_id']}: {skipped['reason']}")
    colour = {RunState.COMPLETED: "green", RunState.REFUSED: "yellow"}.get(summary.get("state"), "red")
    out.print(str(summary.get("message")), style=colour)
    if code == 0 and not apply and summary.get("changes"):
        out.print(f"To apply it: novi-mailman undo {run} --apply"
                  + (f" --ledger-block {ledger_block}" if ledger_block else ""))
    raise typer.Exit(code)


@app.command()
@one_line
def explain(who: Annotated[str, typer.Argument(help="An e-mail address (Novi's Email) or a Novi UniqueID.")],
            rules: Annotated[str, typer.Option("--rules", help="Routing rules file (YAML).")],
            novi_block: NoviBlock = "novi") -> None:
    """Which lists the rules put one person on, and for each other list the condition that keeps
    them off. Reads Novi for that person only; writes nothing."""
    from tasks.core.rules import load_rules

    the_rules = load_rules(rules)
    _prefect()
    import pandas as pd

    from tasks.blocks import NoviCredentials, saved
    from tasks.core.eligibility import companies_of
    from tasks.core.eligibility import explain as explained
    from tasks.core.schema import GUID
    from tasks.core.members import members_frame

    client = saved(NoviCredentials, novi_block).get_client()
    client.http.interactive()
    found = client.member(who.strip()) if GUID.fullmatch(who.strip().lower()) else None
    records = [found] if found else client.members_with_email(who.strip())
    if not records:
        out.print(f"Novi has no record with the address or id {who} (Novi's e-mail search looks at Email only).")
        raise typer.Exit(EXIT_FAILED)
    members = members_frame(records, list(the_rules.novi.address_fields))
    # Their companies, for rules that judge people by them (contacts, inheriting members).
    parents = {p for p in members["parent_id"].dropna()} - {i.lower() for i in members["novi_id"]}
    companies = companies_of(members_frame([*records, *client.members_by_id(parents).values()]))
    for member in members.itertuples():
        seats = ", ".join(f"{s[2] or 'member'} of {s[1]} ({(s[3] or '…')[:10]} to {(s[4] or 'open')[:10]})"
                          for s in member.seats) or "none"
        fields = ", ".join(f"{k}={v}" for k, v in member.custom_fields.items()) or "none"
        out.print(f"Novi {member.novi_id}: {member.display_name} <{member.email}>, status {member.status or 'missing'}"
                  f"{'' if member.active else ', inactive'}; groups: {', '.join(member.group_names) or 'none'}; "
                  f"committee seats: {seats}; custom fields: {fields}" + (
                      f"; company: {_company_line(companies, member.parent_id)}" if isinstance(member.parent_id, str)
                      else ""))
    table = Table(title=f"Lists for {who} by {rules} (the rules alone: a ban or a self-unsubscribe is the plan's)")
    for column in ("list", "Novi id", "belongs", "what keeps them off"):
        table.add_column(column)
    for row in explained(members, the_rules, pd.Timestamp.now(tz="UTC"), companies).itertuples():
        table.add_row(row.list_id, row.novi_id, "yes" if row.belongs else "no", row.why_not)
    out.print(table)


def _company_line(companies, company_id: str) -> str:
    if company_id not in companies.index:
        return f"{company_id} (not in Novi)"
    company = companies.loc[company_id]
    return f"{company['display_name']} ({company['status'] or 'no status'}{'' if company['active'] else ', inactive'})"


alerts = typer.Typer(help="Prefect automations that tell operators about the runs, through a notification block.",
                     no_args_is_help=True)
app.add_typer(alerts, name="alerts")


@alerts.command("install")
@one_line
def alerts_install(
    notify: Annotated[str, typer.Option(help="A saved Prefect notification block, TYPE/NAME: slack-webhook/ops, "
                                             "custom-webhook/ops, ms-teams-webhook/ops, email/ops…")],
    deployment: Annotated[Optional[list[str]], typer.Option(
        help="A deployment to watch, FLOW/DEPLOYMENT (repeat it); default: the nightly full sync and the "
             "webhook member sync.")] = None,
    grace_hours: Annotated[float, typer.Option(min=0, max=168, help="How late a scheduled full sync may be "
                                                                     "before 'no completed sync' is sent.")] = 2.0,
) -> None:
    """Create or update the alerts (idempotent): a run failed or crashed; a run refused or waiting
    for approval; a run recovered; no completed full sync within its schedule's interval + grace."""
    from datetime import timedelta

    _prefect()
    from tasks import alerts as the_alerts

    block_id = the_alerts.notification_block(notify)
    watched = the_alerts.targets(deployment or list(the_alerts.DEFAULT_DEPLOYMENTS))
    for name, what in the_alerts.install(watched, block_id, timedelta(hours=grace_hours)):
        out.print(f"{what}: {name}")
    unscheduled = [t.name for t in watched if t.interval is None and t.name.startswith("sync-lists/")]
    if unscheduled:
        err.print(f"No schedule on {', '.join(unscheduled)}: no 'no completed sync' alert for it.")


@alerts.command("list")
@one_line
def alerts_list() -> None:
    """The alerts installed, with what each watches."""
    _prefect()
    from tasks import alerts as the_alerts

    found = the_alerts.installed()
    for automation in found:
        out.print(f"{automation.name} ({'on' if automation.enabled else 'off'}): "
                  f"{automation.trigger.describe_for_cli().strip()}")
    if not found:
        out.print("No novi-mailman alerts on this Prefect server (novi-mailman alerts install --notify TYPE/NAME).")


@alerts.command("remove")
@one_line
def alerts_remove() -> None:
    """Remove every alert `alerts install` made (nothing else)."""
    _prefect()
    from tasks import alerts as the_alerts

    removed = the_alerts.remove()
    out.print("\n".join(f"removed: {name}" for name in removed) or "No novi-mailman alerts to remove.")


ledger = typer.Typer(help="The ledger over the years: its schema and upgrades, what it holds, and members' "
                          "personal data kept no longer than needed (README: Privacy).", no_args_is_help=True)
app.add_typer(ledger, name="ledger")


@ledger.command("status")
@one_line
def ledger_status(ledger_block: LedgerBlock = None, as_json: AsJson = False) -> None:
    """Where the ledger is, its schema revision and this release's, its rows and its oldest history."""
    from tasks import ledger_keeping

    shown = ledger_keeping.status(_ledger(ledger_block))
    if as_json:
        out.print(json.dumps(shown), soft_wrap=True)
        return
    out.print(f"Ledger      {shown['ledger']}")
    if not shown["exists"]:
        out.print("            none yet: the first real run makes it")
        return
    due = ("; upgraded by the next real run, or now with `novi-mailman ledger upgrade`" if shown["upgrade_due"]
           else "")
    out.print(f"Schema      {shown['schema']} (this release, novi-mailman {shown['release']}: "
              f"{shown['release_schema']}{due})")
    out.print(f"Written by  novi-mailman {shown['written_by'] or '0.1.0 (before the ledger kept it)'}")
    from tasks.ledger_keeping import TABLES

    out.print("Rows        " + " · ".join(f"{TABLES[name]} {count:,}" for name, count in shown["rows"].items()))
    out.print(f"History     oldest change {shown['oldest_change'] or '(none)'}, oldest run {shown['oldest_run'] or '(none)'}")


@ledger.command("upgrade")
@one_line
def ledger_upgrade(ledger_block: LedgerBlock = None) -> None:
    """Bring the ledger to this release's schema now, in one transaction (a real run does it by itself)."""
    from tasks.ledger_schema import HEAD

    opened = _ledger(ledger_block, create=True)
    if opened.found_schema is None:
        out.print(f"Made a new ledger at {opened.location} (schema {HEAD}).")
    elif opened.upgraded_from:
        out.print(f"Upgraded the ledger at {opened.location} from schema {opened.upgraded_from} to {HEAD}.")
    else:
        out.print(f"The ledger at {opened.location} is at schema {HEAD} already.")


@ledger.command("export")
@one_line
def ledger_export(address: Annotated[Optional[str], typer.Argument(
                      help="The e-mail address whose records to export; none: the whole ledger.")] = None,
                  ledger_block: LedgerBlock = None) -> None:
    """Everything the ledger holds about one address (or all of it) as JSON: an access request (GDPR art. 15)."""
    from tasks import ledger_keeping

    out.print(json.dumps(ledger_keeping.export(_ledger(ledger_block), address), indent=1),
              soft_wrap=True)


def _ledger_to_keep(ledger_block: str | None):
    """The ledger prune and forget write to: there already (they make none), at this release's schema."""
    from tasks.ledger import LedgerError

    if not _ledger(ledger_block).exists:
        raise LedgerError("no ledger there yet: no run has stored anything to prune or forget")
    return _ledger(ledger_block, create=True)


ReportsDir = Annotated[Optional[str], typer.Option(
    "--reports-dir", help="The folder of the plan CSVs (default: $NOVI_MAILMAN_REPORTS, else ./reports).")]
SkipPrefect = Annotated[bool, typer.Option(
    "--skip-prefect", help="Leave the Prefect server's artifacts alone (only the ledger and the CSVs).")]


@ledger.command("prune")
@one_line
def ledger_prune(rules: RulesOpt = None,
                 days: Annotated[Optional[int], typer.Option(
                     min=1, max=3650, help="Keep this many days (default: the rules' ledger.keep_history_days, "
                                           "else 90).")] = None,
                 reports_dir: ReportsDir = None, ledger_block: LedgerBlock = None,
                 skip_prefect: SkipPrefect = False) -> None:
    """Remove what is older than the retention period now (a real full run does it after itself)."""
    from datetime import datetime, timedelta, timezone

    from tasks import ledger_keeping, retention
    from tasks.core.rules import resolve_rules
    from tasks.core.schema import KEEP_HISTORY_DAYS
    from tasks.report import reports_folder

    chosen = resolve_rules(rules, None) if rules else None
    days = days or (chosen.ledger.keep_history_days if chosen else KEEP_HISTORY_DAYS)
    lists = [rule.list_id for rule in chosen.lists] if chosen else None
    before = datetime.now(timezone.utc) - timedelta(days=days)
    kept = _ledger_to_keep(ledger_block)
    removed = ledger_keeping.prune(kept, days, lists)
    removed["plan CSVs"] = retention.old_plan_files(reports_folder(reports_dir), before)
    if not skip_prefect:
        _prefect()
        from prefect import get_client

        with get_client(sync_client=True) as client:
            removed["artifacts"] = retention.old_artifacts(client, before)
    out.print(f"Kept {days} days ({'the lists of ' + rules if rules else 'every list'}); removed: "
              + (", ".join(f"{n:,} {ledger_keeping.TABLES.get(what, what)}" for what, n in removed.items() if n)
                 or "nothing (nothing was older)"))


@ledger.command("forget")
@one_line
def ledger_forget(address: Annotated[str, typer.Argument(help="The e-mail address to erase.")],
                  yes: Annotated[bool, typer.Option("--yes", help="Do not ask: erasure cannot be undone.")] = False,
                  reports_dir: ReportsDir = None, ledger_block: LedgerBlock = None,
                  skip_prefect: SkipPrefect = False, as_json: AsJson = False) -> None:
    """Erase one person everywhere this tool stored them (GDPR art. 17): the ledger, the plan CSVs, the artifacts."""
    from tasks import ledger_keeping, retention
    from tasks.report import reports_folder

    if "@" not in address:
        raise ValueError(f"not an e-mail address: {address!r}")
    if not yes:
        if not sys.stdin.isatty():
            raise ValueError("erasure cannot be undone: give --yes to confirm it")
        typer.confirm(f"Erase {address} from the ledger, the plan CSVs and the Prefect server? It cannot be undone",
                      abort=True)
    kept = _ledger_to_keep(ledger_block)
    found = ledger_keeping.forget(kept, address)
    erased = retention.Erased()
    retention.erase_from_plan_files(reports_folder(reports_dir), [address, *found["novi_ids"]], erased)
    if not skip_prefect:
        _prefect()
        from prefect import get_client

        with get_client(sync_client=True) as client:
            retention.erase_from_prefect(client, address, found["novi_ids"], erased)
    said = {**{k: v for k, v in found.items() if k != "novi_ids"}, "ledger": kept.location,
            "csv_files": erased.csv_files, "csv_rows": erased.csv_rows, "artifacts": erased.artifacts,
            "history_runs_deleted": erased.flow_runs, "logs_naming_them": erased.logs_naming,
            "logs_unsearched": erased.logs_unsearched,
            "prefect": "skipped" if skip_prefect else "done"}
    if as_json:
        out.print(json.dumps(said), soft_wrap=True)
        return
    lists = ", ".join(f"{lid} ({status})" for lid, status in found["lists"].items()) or "no list"
    if found["lists"] or found["changes"] or found["intents"] or found["details_blanked"]:
        out.print(f"Erased {address} from the ledger at {kept.location}: its memory on {lists}, "
                  f"{found['changes']:,} recorded changes, {found['intents']:,} intents, "
                  f"{found['details_blanked']:,} mentions in other rows.")
    else:
        out.print(f"The ledger at {kept.location} holds nothing of {address}.")
    if found["opt_outs_kept"]:
        out.print(f"Kept without the address (a keyed digest): that they left {', '.join(found['opt_outs_kept'])} "
                  "by themselves, so that no run puts them back.")
    out.print(f"Erased from {erased.csv_files} plan CSVs ({erased.csv_rows} rows)"
              + ("" if skip_prefect else f", {erased.artifacts} artifacts and {erased.flow_runs} history runs on the "
                                         "Prefect server") + ".")
    if erased.logs_unsearched:
        err.print(f"Logs not searched for them: {erased.logs_unsearched}.")
    if erased.logs_naming:
        out.print(f"Still named in the logs of flow runs {', '.join(erased.logs_naming)}: Prefect cannot edit a log; "
                  "delete those runs in the UI if the request covers them.")
    out.print("Out of this tool's reach: Mailman itself (a list it is still on), Novi, mail already sent (digests, "
              "alerts), backups of the ledger, and Prefect's event feed (run names and messages, kept for "
              "PREFECT_EVENTS_RETENTION_PERIOD, 7 days by default).")


server = typer.Typer(help="The local Prefect server the commands use when PREFECT_API_URL is not set.",
                     no_args_is_help=True)
app.add_typer(server, name="server")


@server.command("start")
@one_line
def server_start() -> None:
    """Start it in the background (the first command that needs it does this by itself)."""
    from tasks import local_server

    if local_server.configured():
        err.print("PREFECT_API_URL is set: the commands use that server, not a local one.")
    url = local_server.start(lambda line: err.print(line))
    out.print(f"Prefect server: {url.removesuffix('/api')} (running)")


@server.command("stop")
@one_line
def server_stop() -> None:
    """Stop it (flow runs, blocks and artifacts stay in its database for the next start)."""
    from tasks import local_server

    out.print("Prefect server: stopped" if local_server.stop() else "Prefect server: was not running")


@server.command("status")
def server_status() -> None:
    """Whether it runs, where, and which server the commands use."""
    from tasks import local_server

    running = local_server.status()
    out.print(f"Local Prefect server: {running['url'].removesuffix('/api')} (pid {running['pid']})" if running
              else f"Local Prefect server: not running (home {local_server.home()})")
    if os.environ.get("PREFECT_API_URL"):
        out.print(f"The commands use PREFECT_API_URL: {os.environ['PREFECT_API_URL']}")
    raise typer.Exit(0 if running else 1)


def command_line() -> None:
    """The installed `novi-mailman`: typer's app, with a mistake in the command itself (an
    unknown option, a value out of range) said in one line, as every expected failure is, rather
    than typer's framed panel. Nothing is imported or started before it is checked."""
    from typer._click.exceptions import ClickException, NoArgsIsHelpError  # typer carries its own click

    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError as exc:  # `novi-mailman` alone, or a group without its command: the help
        exc.show()
        sys.exit(exc.exit_code)
    except ClickException as exc:
        where = exc.ctx.command_path if getattr(exc, "ctx", None) else "novi-mailman"
        err.print(f"{where}: {exc.format_message()} (see {where} --help)", style="red")
        sys.exit(exc.exit_code)
    except typer.Abort:  # Ctrl-C at a prompt
        err.print("Aborted.", style="red")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    command_line()
