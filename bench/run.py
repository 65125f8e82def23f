"""`make bench`: the tool's cost measured against the lower bound and the old bridge, on real peers.

    .venv/bin/python -m bench.run [--sizes 1000 10000 100000] [--repeat 3] [--churn 0.01]
                                  [--throughput 1000] [--workers 1 2 4 8]
                                  [--planner-sizes 100000 1000000] [--json .bench/bench.json]
                                  [--ledger sqlite|postgresql] [--tool path/to/novi-mailman]

Starts its own Prefect server, Novi sandbox and two real Mailman cores (A for the tool, B for
the old bridge) on 127.0.0.1, all in `.bench/`, and stops them at the end. For each size:

1. the sandbox is reset to that many members; both cores get the same roster, pre-filled with
   Mailman's own `mailman addmembers` with whom the tool's own dry run says belongs (kept as a
   snapshot in `.bench/snapshots/`, so the next `make bench` skips the pre-fill);
2. an unmeasured first run adopts the roster into a fresh ledger;
3. `--repeat` times, a "day": 1% churn in Novi, then, measured, the tool on core A (the
   `novi-mailman sync --json` command, a process of its own) and the old bridge
   (bench/baseline.py) on core B; then a day with no changes, both again.

Around each day, the **floor** of the run: Novi's pages at the tool's pace (pages ÷ requests
per second), the roster read measured alone (the tool's own client, no Prefect, on core C, a
third core holding the same roster), and the day's writes replayed on core C by a bare loop
of the same client calls (which keeps C in step with A). The floor is max(Novi, roster) +
bare apply: what a run that read both at once and wrote like the bare loop would take. The
reads alone are also timed one page at a time, as the tool read them before issue 18.

Then the apply throughput (the tool's apply phase against a bare subscribe loop, same addresses,
same core, for several worker counts) and the planner alone (bench/planner.py).

Every figure is a median over the repetitions with its min and max. The script prints markdown
tables and writes every raw measurement as JSON. It asserts nothing about time: performance is
read here, never in a test.

`--ledger postgresql` keeps the tool's ledger in a throwaway PostgreSQL cluster the bench starts
(fsync off) instead of a SQLite file. `--tool` measures another build's `novi-mailman` (e.g. a
worktree of an older commit, for before and after on the same peers); its pre-fill is its own
snapshot, as its dry run decides who belongs.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import requests

from sandbox import postgres, servers
from sandbox.mailman import ADMIN_PASS, ADMIN_USER, MailmanAdmin, MailmanCore
from sandbox.novi import DEFAULT_KEY
from tasks.core.rules import NoviSettings
from tasks.core.schema import Action, Outcome
from tasks.mailman import ROSTER_PAGE_SIZE, ROSTER_PAGES_IN_FLIGHT, MailmanClient
from tasks.novi import DEFAULT_REQUESTS_PER_SECOND, NOVI_PAGES_IN_FLIGHT, NoviClient, extract_members

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".bench"
BIN = Path(sys.executable).parent
PREFECT_PORT, NOVI_PORT, CORE_A_PORT, CORE_B_PORT, CORE_C_PORT = 4210, 8775, 8011, 8012, 8013
NOVI_URL = f"http://127.0.0.1:{NOVI_PORT}"
LIST = "members@example.org"
LIST_ID = "members.example.org"
RULES = STATE / "rules.yaml"   # one list, lapsed: unsubscribe (the default; see HOLDS)
NOVI_PAGE = 1000          # the rules' page size and the sandbox's page cap
BATCH = 100               # the sync's default batch size
WORKERS = 2               # the sync's default worker count
SEED = 1
HOLDS = False             # the bench's rule unsubscribes lapsed members (lapsed: unsubscribe)
ROSTER_IN_FLIGHT = (1, 2, 3)   # the roster read alone, by pages in flight (the tool's default: ROSTER_PAGES_IN_FLIGHT)
# How a day's churn divides (shares of the churned members).
CHURN_MIX = {"lapse": 0.35, "renew": 0.20, "add": 0.20, "rename": 0.10, "change_address": 0.05,
             "opt_out": 0.05, "remove": 0.05}
PREFILL_CHUNK = 10_000
SNAPSHOT_VERSION = 1      # bump when the pre-fill changes, so old snapshots are not reused
NOVI_HEADERS = {"Authorization": f"Basic {DEFAULT_KEY}"}


def environment() -> dict[str, str]:
    return {**os.environ, **servers.prefect_environment(STATE, PREFECT_PORT), "PREFECT_LOGGING_LEVEL": "WARNING",
            "NOVI_MAILMAN_REPORTS": str(STATE / "reports"),
            "NOVI_API_KEY": DEFAULT_KEY, "MAILMAN_PASSWORD": ADMIN_PASS}


def say(text: str) -> None:
    print(f"\n==> {text}", file=sys.stderr, flush=True)


# measuring one process ----------------------------------------------------------------------
def measured(command: list[str], env: dict[str, str]) -> dict:
    """Run a command to its end; its stdout, wall seconds and its own peak RSS (bench/peak.py)."""
    peak = STATE / "peak-rss"
    peak.unlink(missing_ok=True)
    with open(STATE / "commands.log", "ab") as log:
        started = time.monotonic()
        process = subprocess.run([sys.executable, "-m", "bench.peak", str(peak), *command], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=log, env=env, cwd=ROOT)
        wall = time.monotonic() - started
    if process.returncode:
        raise SystemExit(f"{' '.join(command[:3])} exited with {process.returncode}; see .bench/commands.log")
    return {"stdout": process.stdout.decode(), "wall_s": round(wall, 3),
            "peak_rss_mb": round(int(peak.read_text()) / 1024, 1)}


class Setup:
    """What is measured: which build's `novi-mailman` (`--tool`), on which kind of ledger (`--ledger`)."""

    tool = BIN / "novi-mailman"
    postgres: str | None = None   # the throwaway cluster's URL, when the ledger is PostgreSQL

    @classmethod
    def snapshot(cls, size: int) -> Path:
        """Where a size's pre-fill is kept: another build's dry run may pick other names, so its own."""
        # another build's tool is <checkout>/.venv/bin/novi-mailman: its snapshot is named after the checkout
        build = "" if cls.tool == BIN / "novi-mailman" else f"-{cls.tool.resolve().parents[2].name}"
        return STATE / "snapshots" / f"{size}-seed{SEED}-v{SNAPSHOT_VERSION}{build}"

    @classmethod
    def fresh_ledger(cls, name: str) -> str:
        """An empty ledger called `name`: a SQLite file in .bench/, or a database in the cluster."""
        if cls.postgres:
            return postgres.fresh_database(cls.postgres, name.replace("-", "_"))
        path = STATE / f"{name}.sqlite"
        path.unlink(missing_ok=True)
        return str(path)


def tool(*args: str, ledger: str) -> dict:
    """One `novi-mailman sync --json` process: its summary plus the process figures."""
    env = {**environment(), "NOVI_MAILMAN_LEDGER": ledger}
    run = measured([str(Setup.tool), *args, "--json"], env)
    summary = json.loads(run["stdout"])
    if summary.get("state") != "completed":
        raise SystemExit(f"the sync did not complete: {summary.get('message')}")
    return {"summary": summary, "wall_s": run["wall_s"], "peak_rss_mb": run["peak_rss_mb"]}


def old_bridge(core: MailmanCore) -> dict:
    run = measured([sys.executable, "-m", "bench.baseline", NOVI_URL, core.rest_url, LIST_ID],
                   {**environment(), "MAILMAN_USER": ADMIN_USER})
    return {**json.loads(run["stdout"]), "wall_s": run["wall_s"], "peak_rss_mb": run["peak_rss_mb"]}


# the lower bound ------------------------------------------------------------------------------
def pages(n: int, size: int) -> int:
    """Pages a sweep of n entries needs (one, empty, when there are none)."""
    return max(1, math.ceil(n / size))


def lower_bound(summary: dict, roster_before: int, held_before: int | None, bans: tuple[int, int] = (0, 0),
                requests: int = 0) -> dict[str, int]:
    """The fewest calls that can read everything and make these changes.

    Mailman's version (one call), each list's settings (one call each: who Mailman mails by
    itself, tasks.core.notices), pages of every collection read (Novi members, each roster;
    of a roster with members, its bounce-disabled members, one page when there are none, and
    the held members of a list whose rule holds lapsed members, `held_before` None: the rule
    holds nobody; the list's bans
    and the global bans, `bans` entries in all, one page each when there are none; the list's
    pending requests, one page when there are none), one preference read per member the plan
    moves, removes (they may renew, and an undo restores them with their settings: also those
    Novi no longer knows) or holds, one
    call per single write (subscribe, rename of an address, hold, release), and one mass
    unsubscribe per `BATCH` removals of a list. The bench syncs one list, where the renames of
    a list are the renamed addresses (with several lists an address is renamed once).
    """
    changes = {a: sum(item["changes"][a] for item in summary["lists"]) for a in
               ("subscribe", "unsubscribe", "hold", "release", "rename")}
    searched = roster_before > 0  # an empty roster has nobody to search for
    bound = {"mailman_read": 1 + len(summary["lists"]),
             "novi_page": pages(summary["novi_members"], NOVI_PAGE),
             "roster_page": pages(roster_before, ROSTER_PAGE_SIZE),
             "bouncing_page": int(searched),
             "preferences_read": changes["unsubscribe"] + changes["hold"],
             "held_page": 0 if held_before is None or not searched else pages(held_before, ROSTER_PAGE_SIZE),
             "ban_page": sum(pages(n, ROSTER_PAGE_SIZE) for n in bans),
             "request_page": pages(requests, ROSTER_PAGE_SIZE),
             **{a: changes[a] for a in ("subscribe", "hold", "release", "rename")},
             "mass_unsubscribe": sum(math.ceil(item["changes"]["unsubscribe"] / BATCH) for item in summary["lists"])}
    return {kind: n for kind, n in bound.items() if n}


def roster_counts(core: MailmanCore) -> tuple[int, int]:
    """How many members and held members the list has (read by the bench, not counted for the tool)."""
    session = requests.Session()
    session.auth = (ADMIN_USER, ADMIN_PASS)
    base = f"{core.rest_url}/3.1"
    roster = session.get(f"{base}/lists/{LIST_ID}/roster/member", params={"count": 1, "page": 1}, timeout=60).json()
    held = session.get(f"{base}/members/find", params={"list_id": LIST_ID, "role": "member", "count": 1, "page": 1,
                                                       "delivery_status": "by_moderator"}, timeout=60).json()
    return roster["total_size"], held["total_size"]


def emails(core: MailmanCore, list_id: str) -> set[str]:
    return set(MailmanAdmin(core.rest_url).roster(list_id))


# the peers ----------------------------------------------------------------------------------
class Peers:
    """The Prefect server, the Novi sandbox and cores A (the tool), B (the old bridge) and C (the
    floor: the reads alone and the bare apply), started and stopped by the bench."""

    def __init__(self) -> None:
        self.a = MailmanCore(home=STATE / "core-a", port=CORE_A_PORT)
        self.b = MailmanCore(home=STATE / "core-b", port=CORE_B_PORT)
        self.c = MailmanCore(home=STATE / "core-c", port=CORE_C_PORT)

    def __enter__(self) -> Peers:
        STATE.mkdir(exist_ok=True)
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        servers.start_prefect(PREFECT_PORT, STATE, environment())
        servers.start("novi-sandbox", [sys.executable, "-m", "sandbox.novi", "--port", str(NOVI_PORT), "--size", "10",
                                       "--page-cap", str(NOVI_PAGE)], f"{NOVI_URL}/_sandbox/state", STATE,
                      environment(), headers=NOVI_HEADERS)
        subprocess.run([str(Setup.tool), "blocks", "--novi-url", NOVI_URL, "--mailman-url",
                        self.a.rest_url, "--mailman-user", ADMIN_USER], env=environment(), check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    def __exit__(self, *exc) -> None:
        """Stop everything started, each on its own: one that fails to stop does not keep the others up."""
        stops = [self.a.stop, self.b.stop, self.c.stop, *(lambda name=name: servers.stop(name, STATE)
                                            for name in ("novi-sandbox", "prefect"))]
        problems = []
        for stop in stops:
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 - reported below, after the rest were stopped
                problems.append(exc)
        if problems:
            raise RuntimeError(f"could not stop everything the bench started: {problems}")

    def novi(self, path: str, body: dict) -> dict:
        response = requests.post(f"{NOVI_URL}/_sandbox/{path}", json=body, headers=NOVI_HEADERS, timeout=600)
        response.raise_for_status()
        return response.json()

    def prepare(self, size: int) -> None:
        """The sandbox at `size` members; both cores holding the same roster, in step with it."""
        self.novi("reset", {"size": size, "seed": SEED})
        snapshot = Setup.snapshot(size)
        if not (snapshot / "data" / "mailman.db").exists():
            self._prefill(size, snapshot)
        for core in (self.a, self.b, self.c):
            core.stop()
            shutil.rmtree(core.home / "var", ignore_errors=True)
            shutil.copytree(snapshot, core.home / "var")
            core.start(timeout=180)

    def _prefill(self, size: int, snapshot: Path) -> None:
        say(f"Pre-filling a roster of {size:,} with `mailman addmembers` (once; kept in {snapshot.relative_to(ROOT)})")
        core = self.a
        core.reset()
        MailmanAdmin(core.rest_url).recreate_list(LIST)
        plan = tool("plan", "--rules", str(RULES), ledger=Setup.fresh_ledger("prefill-ledger"))
        with open(plan["summary"]["plan_csv"], newline="") as source:
            rows = [r for r in csv.DictReader(source) if r["action"] == "subscribe"]
        members = STATE / "prefill.txt"
        started = time.monotonic()
        # In chunks: one addmembers is one transaction, and a 100,000-line one slows down as it grows.
        for first in range(0, len(rows), PREFILL_CHUNK):
            chunk = rows[first:first + PREFILL_CHUNK]
            members.write_text("".join(f'"{_quoted(r["display_name"])}" <{r["email"]}>\n' for r in chunk))
            if core._mailman("addmembers", "--no-welcome-msg", str(members), LIST, log=STATE / "addmembers.log",
                             timeout=1800).returncode:
                raise SystemExit("mailman addmembers failed; see .bench/addmembers.log")
            say(f"addmembers: {first + len(chunk):,} of {len(rows):,} after {time.monotonic() - started:.0f} s")
        say(f"addmembers: {len(rows):,} members in {time.monotonic() - started:.0f} s")
        if emails(core, LIST_ID) != {r["email"].lower() for r in rows}:
            raise SystemExit("the pre-filled roster is not what the dry run planned")
        core.stop()
        shutil.rmtree(snapshot, ignore_errors=True)
        shutil.copytree(core.home / "var", snapshot, ignore=shutil.ignore_patterns("logs", "locks", "*.pid"))


def _quoted(name: str) -> str:
    return name.replace("\\", "\\\\").replace('"', '\\"')


# the days ------------------------------------------------------------------------------------
def churn_counts(size: int, share: float) -> dict[str, int]:
    total = max(len(CHURN_MIX), round(size * share))
    return {kind: max(1, round(total * part)) for kind, part in CHURN_MIX.items()}


def timed(read) -> float:
    started = time.monotonic()
    read()
    return round(time.monotonic() - started, 3)


def reads_alone(peers: Peers, every_way: bool) -> dict:
    """The run's reads, each alone, in the bench process: the roster on core C with the tool's
    pages in flight (the floor needs it every day); `every_way` (a size's first day), also one
    page at a time and with more in flight, and Novi's members one page at a time and as the
    tool reads them (at 100,000 members these take minutes, so once per size)."""
    def novi(in_flight: int) -> float:
        client = NoviClient(NOVI_URL, DEFAULT_KEY, pages_in_flight=in_flight)
        fields = list(NoviSettings().address_fields)  # the bench's rules keep the default
        return timed(lambda: extract_members.fn(client, NOVI_PAGE, fields))  # the tool's own read

    def roster(in_flight: int) -> float:
        client = MailmanClient(peers.c.rest_url, ADMIN_USER, ADMIN_PASS, pages_in_flight=in_flight)
        return timed(lambda: client.roster(LIST_ID, with_held=HOLDS))

    if not every_way:
        return {"novi_s": {}, "roster_s": {ROSTER_PAGES_IN_FLIGHT: roster(ROSTER_PAGES_IN_FLIGHT)}}
    return {"novi_s": {n: novi(n) for n in sorted({1, NOVI_PAGES_IN_FLIGHT})},
            "roster_s": {n: roster(n) for n in ROSTER_IN_FLIGHT}}


def bare_apply(core: MailmanCore, plan_csv: str) -> tuple[float, dict[str, int]]:
    """The writes the tool applied, again on `core` by a bare loop of the same client calls, one
    after another: no Prefect, no batches in flight. Only subscribes, removals and renames
    (the bench's days make nothing else)."""
    with open(plan_csv, newline="") as source:
        applied = [r for r in csv.DictReader(source) if r["outcome"] == Outcome.APPLIED]
    unknown = {r["action"] for r in applied} - {Action.SUBSCRIBE, Action.UNSUBSCRIBE, Action.RENAME}
    if unknown:
        raise SystemExit(f"the bare loop cannot replay {sorted(unknown)}")
    client = MailmanClient(core.rest_url, ADMIN_USER, ADMIN_PASS)
    removals = [r["email"] for r in applied if r["action"] == Action.UNSUBSCRIBE]
    started = time.monotonic()
    for row in applied:
        if row["action"] == Action.SUBSCRIBE:
            client.subscribe(LIST_ID, row["email"], row["display_name"], welcome=False)
        elif row["action"] == Action.RENAME:
            client.rename(row["email"], row["display_name"])
    for first in range(0, len(removals), BATCH):
        client.unsubscribe_many(LIST_ID, removals[first:first + BATCH])
    return round(time.monotonic() - started, 3), client.http.calls


def floor_of(alone: dict, summary: dict, bare_s: float) -> dict:
    """max(Novi's pages at the pace, the roster read alone with the tool's pages in flight) + the bare apply."""
    novi_paced = round(summary["http_calls"].get("novi_page", 0) / DEFAULT_REQUESTS_PER_SECOND, 3)
    roster = alone["roster_s"][ROSTER_PAGES_IN_FLIGHT]
    return {"novi_paced_s": novi_paced, "roster_s": roster, "bare_apply_s": bare_s,
            "floor_s": round(max(novi_paced, roster) + bare_s, 3)}


def one_day(peers: Peers, size: int, ledger: str, churn: dict[str, int] | None, label: str, with_bridge: bool,
            bridge_first: bool, every_way: bool = True) -> dict:
    """A day of churn (or none), then the tool on core A and (`with_bridge`) the old bridge on core B.

    Who goes first alternates between repetitions, so neither always runs while the Prefect
    server is still recording the other's run.
    """
    if churn:
        peers.novi("churn", churn)
    roster_before, held_before = roster_counts(peers.a)
    held_before = held_before if HOLDS else None
    alone = reads_alone(peers, every_way)
    bridge = old_bridge(peers.b) if with_bridge and bridge_first else None
    run = tool("sync", "--rules", str(RULES), "--workers", str(WORKERS), "--batch-size", str(BATCH), ledger=ledger)
    if with_bridge and not bridge_first:
        bridge = old_bridge(peers.b)
    summary = run["summary"]
    bare_s, bare_calls = bare_apply(peers.c, summary["plan_csv"])
    bound = lower_bound(summary, roster_before, held_before)
    calls = summary["http_calls"]
    return {
        "size": size, "day": label if churn else "no changes", "churn": churn or {},
        "changes": summary["changes"], "calls": calls, "lower_bound": bound,
        "over_bound": {k: calls.get(k, 0) - bound.get(k, 0) for k in sorted(set(calls) | set(bound))
                       if calls.get(k, 0) != bound.get(k, 0)},
        "ratio": round(sum(calls.values()) / sum(bound.values()), 4),
        "phases_s": summary["phases_s"], "flow_s": summary["duration_s"], "process_s": run["wall_s"],
        "prefect_overhead_s": round(run["wall_s"] - summary["duration_s"], 3),
        "peak_rss_mb": run["peak_rss_mb"], "flow_run_id": summary["flow_run_id"],
        # the ledger rows the run's record wrote (only those that changed, since issue 28)
        "ledger_rows_written": summary.get("ledger_rows_written"),
        "old_bridge": bridge, "alone": alone, "bare_calls": bare_calls,
        "floor": floor_of(alone, summary, bare_s),
    }


def size_runs(peers: Peers, size: int, repeat: int, share: float, bridge_quiet_up_to: int,
              bridge_up_to: int | None, keep: Callable[[dict], None]) -> list[dict]:
    """The days of one size; `keep` is given each day as soon as it is measured, so a bench that
    fails later (or is stopped) still leaves the days it ran."""
    say(f"{size:,} members: preparing the sandbox and both cores")
    peers.prepare(size)
    ledger = Setup.fresh_ledger(f"ledger-{size}")
    adopt = tool("sync", "--rules", str(RULES), ledger=ledger)["summary"]
    if adopt["changes"]:
        raise SystemExit(f"the pre-filled roster was not in step: {adopt['changes']} changes on the first run")
    runs = []
    for rep in range(1, repeat + 1):
        for churn in (churn_counts(size, share), None):
            bridged = (bridge_up_to is None or size <= bridge_up_to) and (bool(churn) or size <= bridge_quiet_up_to)
            run = one_day(peers, size, ledger, churn, f"{share:.0%} churn", with_bridge=bridged,
                          bridge_first=rep % 2 == 0, every_way=rep == 1)
            run["repetition"] = rep
            runs.append(run)
            keep(run)
            bridge = f"{run['old_bridge']['wall_s']:.1f} s" if run["old_bridge"] else "not run"
            say(f"{size:,} members, {run['day']}, repetition {rep}: {run['changes']} changes, "
                f"{sum(run['calls'].values())} calls (bound {sum(run['lower_bound'].values())}), "
                f"tool {run['process_s']:.1f} s (flow {run['flow_s']:.1f} s, floor {run['floor']['floor_s']:.1f} s), "
                f"old bridge {bridge}")
    tool_has, bridge_has = emails(peers.a, LIST_ID), emails(peers.b, LIST_ID)
    if emails(peers.c, LIST_ID) != tool_has:
        # Another build (--tool) may plan other changes than this checkout's bare loop replays: its
        # own figures stand, only the floor does not.
        say(f"core C, which the bare loop wrote, is no longer in step with core A: the floor of {size:,} is void")
        for run in runs:
            run["floor_void"] = run.pop("floor")
    # Where the two algorithms disagree after the same days (addresses are the sandbox's, made up).
    runs[-1]["rosters_compared"] = {"both": len(tool_has & bridge_has),
                                    "only_tool": sorted(tool_has - bridge_has),
                                    "only_old_bridge": sorted(bridge_has - tool_has)}
    return runs


# apply throughput ---------------------------------------------------------------------------
def throughput(peers: Peers, members: int, workers: list[int], repeat: int) -> list[dict]:
    """The tool's apply phase against a bare subscribe loop: the same addresses, same core, new lists."""
    say(f"Apply throughput: a new list, {members:,} Novi members, workers {workers}, against a bare loop")
    peers.novi("reset", {"size": members, "seed": SEED})
    admin = MailmanAdmin(peers.a.rest_url)
    ledger = Setup.fresh_ledger("ledger-throughput")
    # Unmeasured: makes sure Mailman knows every address, so no trial pays for creating them;
    # its plan names the addresses every trial subscribes.
    warm_up = admin.recreate_list("warm-up@example.org")
    with open(tool("sync", "--list", warm_up, ledger=ledger)["summary"]["plan_csv"], newline="") as source:
        subscribes = [r for r in csv.DictReader(source) if r["action"] == "subscribe"]
    admin.delete_list(warm_up)
    rows: list[dict] = []
    for rep in range(1, repeat + 1):
        for w in workers:
            list_id = admin.recreate_list(f"tool-w{w}-r{rep}@example.org")
            bare_list = admin.recreate_list(f"bare-w{w}-r{rep}@example.org")
            bare_first = rep % 2 == 0  # alternate, so neither always follows the other
            bare_s = bare_loop(peers.a, bare_list, subscribes) if bare_first else None
            summary = tool("sync", "--list", list_id, "--workers", str(w), "--batch-size", str(BATCH),
                           ledger=ledger)["summary"]
            if not bare_first:
                bare_s = bare_loop(peers.a, bare_list, subscribes)
            rows.append({"repetition": rep, "workers": w, "subscribes": summary["lists"][0]["changes"]["subscribe"],
                         "apply_s": summary["phases_s"]["apply"], "calls": summary["http_calls"].get("subscribe", 0),
                         "bare_s": bare_s, "ratio": round(summary["phases_s"]["apply"] / bare_s, 3)})
            if rows[-1]["subscribes"] != len(subscribes):
                raise SystemExit("the tool and the bare loop did not subscribe the same addresses")
            admin.delete_list(list_id)
            admin.delete_list(bare_list)
            say(f"workers {w}, repetition {rep}: tool apply {rows[-1]['apply_s']:.1f} s, "
                f"bare loop {rows[-1]['bare_s']:.1f} s for {len(subscribes)} subscribes")
    return rows


def bare_loop(core: MailmanCore, list_id: str, subscribes: list[dict]) -> float:
    """Mailman's own write rate: the same subscribes, one after another, nothing else."""
    admin = MailmanAdmin(core.rest_url)
    started = time.monotonic()
    for row in subscribes:
        admin.add_member(list_id, row["email"], row["display_name"])  # raises unless 201
    return round(time.monotonic() - started, 3)


@contextmanager
def ledger_server(kind: str) -> Iterator[None]:
    """For a PostgreSQL ledger, a throwaway cluster for the bench's whole run."""
    if kind == "sqlite":
        yield
        return
    bindir = postgres.server_bin()
    if bindir is None:
        raise SystemExit("--ledger postgresql needs PostgreSQL's server programs (apt install postgresql)")
    with postgres.cluster(bindir) as Setup.postgres:
        yield
    Setup.postgres = None


# task runs (Prefect records them with a lag) -------------------------------------------------
def count_task_runs(flow_run_ids: list[str], settle_s: float = 120) -> dict[str, int]:
    api = environment()["PREFECT_API_URL"]
    counts: dict[str, int] = {}
    deadline = time.monotonic() + settle_s
    while True:
        fresh = {}
        for run_id in flow_run_ids:
            answer = requests.post(f"{api}/task_runs/count", timeout=30,
                                   json={"flow_runs": {"id": {"any_": [run_id]}}})
            answer.raise_for_status()
            fresh[run_id] = int(answer.json())
        if fresh == counts or time.monotonic() > deadline:
            return fresh
        counts = fresh
        time.sleep(3)


def start_up(repeat: int) -> dict[str, list[float]]:
    """What a fresh process pays before a flow can start: importing Prefect, and everything the sync imports."""
    env = environment()
    return {what: [measured([sys.executable, "-c", f"import {module}"], env)["wall_s"] for _ in range(repeat)]
            for what, module in (("python", "sys"), ("import prefect", "prefect"), ("import the sync", "flows.sync"))}


# the planner alone ---------------------------------------------------------------------------
def planner(sizes: list[int], repeat: int) -> list[dict]:
    """Each size with one plain list, then with issue 17's routing rules (a chapter list and a
    committee list: bench/planner.py)."""
    rows = []
    for n in sizes:
        for routing in (False, True):
            say(f"The planner alone: {n:,} Novi records × a {n:,} roster{', routing rules on' if routing else ''}")
            run = measured([sys.executable, "-m", "bench.planner", "--one", str(n), "--repeat", str(repeat),
                            *(["--routing"] if routing else [])], environment())
            rows.append({**json.loads(run["stdout"].strip().splitlines()[-1]), "routing": routing})
    return rows


# reporting ------------------------------------------------------------------------------------
def spread(values: list[float], digits: int = 2, unit: str = "") -> str:
    if not values:
        return "–"
    med, low, high = (f"{v:,.{digits}f}" for v in (statistics.median(values), min(values), max(values)))
    return f"{med}{unit}" if low == high else f"{med}{unit} ({low}–{high})"


def _by_key(figures: dict, n: int) -> float | None:
    """A figure keyed by a count of pages in flight: an int in the run, a string once saved as
    JSON; None where it was not measured that day."""
    return figures.get(str(n), figures.get(n))


def _measured(values: list) -> list[float]:
    return [v for v in values if v is not None]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _phase(runs: list[dict], *names: str) -> list[float]:
    return [sum(r["phases_s"].get(n, 0) for n in names) for r in runs]


KINDS = [("novi_page", "Novi pages"), ("roster_page", "roster pages"), ("held_page", "held pages"),
         ("subscribe", "subscribes"), ("mass_unsubscribe", "mass unsub."), ("rename", "renames"),
         ("hold", "holds"), ("release", "releases")]


def markdown(result: dict) -> str:
    out = [f"# novi-mailman benchmark, {result['started_at']}",
           f"{result['machine']}. Medians over {result['repeat']} repetitions, (min–max) where they differ. "
           f"Old bridge = one subscribe/unsubscribe call per Novi member, one after another (bench/baseline.py).", ""]
    groups: dict[tuple[int, str], list[dict]] = {}
    for run in result["runs"]:
        groups.setdefault((run["size"], run["day"]), []).append(run)

    out += ["## HTTP calls: measured / lower bound", "",
            "Each cell is measured/bound (medians); *exact* counts the runs whose every kind of call "
            "equals its bound; *other* is any call of a kind not in the bound.", "",
            "| members | day | " + " | ".join(label for _, label in KINDS)
            + " | other | total | bound | exact | ratio | old bridge | old ÷ tool |",
            "|---:|---|" + "---:|" * (len(KINDS) + 7)]
    for (size, day), runs in groups.items():
        cells = []
        for kind, _ in KINDS:
            measured_ = median([r["calls"].get(kind, 0) for r in runs])
            bound = median([r["lower_bound"].get(kind, 0) for r in runs])
            cells.append(f"{measured_:,.0f}/{bound:,.0f}" if measured_ or bound else "0")
        other = [sum(n for k, n in r["calls"].items() if k not in dict(KINDS)) for r in runs]
        cells.append(spread(other, 0))
        total = [sum(r["calls"].values()) for r in runs]
        bound = [sum(r["lower_bound"].values()) for r in runs]
        exact = sum(1 for r in runs if not r.get("over_bound", {}))
        bridged = [r for r in runs if r["old_bridge"]]
        bridge = [sum(r["old_bridge"]["calls"].values()) for r in bridged]
        out.append(f"| {size:,} | {day} | " + " | ".join(cells) + f" | {median(total):,.0f} | {median(bound):,.0f} | "
                   f"{exact} of {len(runs)} | {spread([r['ratio'] for r in runs], 3)} | {spread(bridge, 0)} | "
                   f"{spread([sum(r['old_bridge']['calls'].values()) / sum(r['calls'].values()) for r in bridged], 0, '×')} |")

    out += ["", "## Wall time (seconds)", "",
            "Phases are inside the flow; the two reads run at once, each timed from the reads' start to its end, "
            "and *read, at once* is the whole reading phase (with the bans, requests and the ledger); *Prefect + "
            "Python* is the `novi-mailman` process's time outside the flow (imports, run creation, shutdown); "
            "*process* is what an operator waits for.", "",
            "| members | day | extract members | extract rosters | read, at once | plan | apply | ledger + report | "
            "flow | Prefect + Python | process | old bridge | old ÷ tool |",
            "|---:|---|" + "---:|" * 11]
    if result.get("start_up"):
        out[-4] += " Start-up alone, timed as bare processes: " + ", ".join(
            f"{what} {spread(seconds)} s" for what, seconds in result["start_up"].items()) + "."
    for (size, day), runs in groups.items():
        out.append(f"| {size:,} | {day} | {spread(_phase(runs, 'extract_members'))} | "
                   f"{spread(_phase(runs, 'extract_rosters'))} | {spread(_phase(runs, 'read'))} | "
                   f"{spread(_phase(runs, 'plan'))} | {spread(_phase(runs, 'apply'))} | "
                   f"{spread(_phase(runs, 'read_ledger', 'read_moderators', 'record_ledger', 'report'))} | "
                   f"{spread([r['flow_s'] for r in runs])} | "
                   f"{spread([r['prefect_overhead_s'] for r in runs])} | {spread([r['process_s'] for r in runs])} | "
                   f"{spread([r['old_bridge']['wall_s'] for r in runs if r['old_bridge']])} | "
                   f"{spread([r['old_bridge']['wall_s'] / r['process_s'] for r in runs if r['old_bridge']], 1, '×')} |")

    floored = {key: [r for r in runs if "floor" in r] for key, runs in groups.items()}
    if any(floored.values()):
        out += ["", "## The floor", "",
                "*Floor* = max(Novi's pages ÷ the pace, the roster read alone) + the bare apply (core C, the "
                "same writes by a bare loop of the same client calls). *One after another* is the two reads "
                "alone one page at a time, added: how the tool read before issue 18. *Read* is the flow's "
                "reading phase (Novi, the roster, bans and requests at once).", "",
                "| members | day | Novi pages ÷ pace | Novi alone, 1 page / " + f"{NOVI_PAGES_IN_FLIGHT} at once | "
                "roster alone, " + " / ".join(f"{n}" for n in ROSTER_IN_FLIGHT) + " pages at once | "
                "one after another | bare apply | floor | read | flow | flow ÷ floor | process |",
                "|---:|---|" + "---:|" * 11]
        for (size, day), runs in floored.items():
            if not runs:
                continue
            novi = [_measured([_by_key(r["alone"]["novi_s"], n) for r in runs])
                    for n in sorted({1, NOVI_PAGES_IN_FLIGHT})]
            roster = [_measured([_by_key(r["alone"]["roster_s"], n) for r in runs]) for n in ROSTER_IN_FLIGHT]
            before = _measured([_by_key(r["alone"]["novi_s"], 1) + _by_key(r["alone"]["roster_s"], 1)
                                for r in runs if _by_key(r["alone"]["novi_s"], 1) is not None])
            out.append(
                f"| {size:,} | {day} | {spread([r['floor']['novi_paced_s'] for r in runs])} | "
                + " / ".join(spread(v) for v in novi) + " | " + " / ".join(spread(v) for v in roster) + " | "
                + f"{spread(before)} | "
                f"{spread([r['floor']['bare_apply_s'] for r in runs])} | {spread([r['floor']['floor_s'] for r in runs])} | "
                f"{spread(_phase(runs, 'read'))} | {spread([r['flow_s'] for r in runs])} | "
                f"{spread([r['flow_s'] / r['floor']['floor_s'] for r in runs], 2, '×')} | "
                f"{spread([r['process_s'] for r in runs])} |")

    out += ["", "## Memory, Prefect task runs and ledger rows written", "",
            "| members | day | changes | peak RSS, tool process | peak RSS, old bridge | task runs | ledger rows written |",
            "|---:|---|---:|---:|---:|---:|---:|"]
    for (size, day), runs in groups.items():
        out.append(f"| {size:,} | {day} | {spread([r['changes'] for r in runs], 0)} | "
                   f"{spread([r['peak_rss_mb'] for r in runs], 0, ' MB')} | "
                   f"{spread([r['old_bridge']['peak_rss_mb'] for r in runs if r['old_bridge']], 0, ' MB')} | "
                   f"{spread([r['task_runs'] for r in runs if 'task_runs' in r], 0)} | "
                   f"{spread([r['ledger_rows_written'] for r in runs if r.get('ledger_rows_written') is not None], 0)} |")
    compared = [r for r in result["runs"] if "rosters_compared" in r and r["old_bridge"]]  # B lived the same days
    if compared:
        out += ["", "Rosters after the last day (tool on core A, old bridge on core B): " + "; ".join(
            f"{r['size']:,}: both {r['rosters_compared']['both']:,}, only the tool's "
            f"{len(r['rosters_compared']['only_tool'])}, only the old bridge's "
            f"{len(r['rosters_compared']['only_old_bridge'])}"
            for r in compared) + "."]

    if result["throughput"]:
        out += ["", "## Apply throughput against Mailman's own write rate", "",
                "| workers | subscribes | tool apply (s) | bare loop (s) | tool ÷ bare | tool subscribes/s |",
                "|---:|---:|---:|---:|---:|---:|"]
        by_workers: dict[int, list[dict]] = {}
        for row in result["throughput"]:
            by_workers.setdefault(row["workers"], []).append(row)
        for w, rows in by_workers.items():
            out.append(f"| {w} | {median([r['subscribes'] for r in rows]):,.0f} | {spread([r['apply_s'] for r in rows])} | "
                       f"{spread([r['bare_s'] for r in rows])} | {spread([r['ratio'] for r in rows])}× | "
                       f"{spread([r['subscribes'] / r['apply_s'] for r in rows], 0)} |")

    if result["planner"]:
        out += ["", "## The planner alone", "", "| Novi records × roster | rules | changes | plan (s) | peak RSS |",
                "|---:|---|---:|---:|---:|"]
        for row in result["planner"]:
            rules = "chapter + committee lists" if row.get("routing") else "one list"
            out.append(f"| {row['records']:,} × {row['roster']:,} | {rules} | {row['changes']:,} | "
                       f"{row['median_s']:.2f} ({row['min_s']:.2f}–{row['max_s']:.2f}) | {row['peak_rss_mb']:,.0f} MB |")
    return "\n".join(out) + "\n"


def merged(paths: list[Path]) -> dict:
    """Saved results as one: runs, throughput and planner rows of every file, the first file's header."""
    results = [json.loads(path.read_text()) for path in paths]
    first = results[0]
    for key in ("runs", "throughput", "planner"):
        first[key] = [row for result in results for row in result[key]]
    return first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="*", type=int, default=[1_000, 10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--churn", type=float, default=0.01, help="share of the members that change each day")
    parser.add_argument("--bridge-quiet-days-up-to", type=int, default=10_000, metavar="N",
                        help="run the old bridge on days without changes only up to N members (its cost "
                             "does not depend on the changes; at 100,000 one run takes minutes)")
    parser.add_argument("--bridge-up-to", type=int, default=None, metavar="N",
                        help="run the old bridge only up to N members (at 100,000 a day of it takes ~20 minutes)")
    parser.add_argument("--throughput", type=int, default=1_000, help="Novi members of the throughput runs (0: skip)")
    parser.add_argument("--workers", nargs="*", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--planner-sizes", nargs="*", type=int, default=[100_000, 1_000_000])
    parser.add_argument("--ledger", choices=("sqlite", "postgresql"), default="sqlite",
                        help="the tool's ledger: a SQLite file, or a PostgreSQL cluster the bench starts")
    parser.add_argument("--tool", type=Path, default=Setup.tool,
                        help="the novi-mailman to measure (default: this checkout's)")
    parser.add_argument("--json", type=Path, default=STATE / "bench.json")
    parser.add_argument("--markdown", nargs="+", type=Path, metavar="JSON",
                        help="only print the tables of saved results (several files are merged)")
    args = parser.parse_args()
    # A bench started in the background ignores SIGINT; SIGTERM then ends it as Ctrl-C would,
    # stopping the servers and cores it started (the `with` blocks below) instead of leaving them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))
    if args.markdown:
        print(markdown(merged(args.markdown)))
        return

    STATE.mkdir(exist_ok=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    (STATE / "commands.log").unlink(missing_ok=True)
    # 1% daily churn of 100,000 members removes ~500 a day: the default cap of 500 would refuse it.
    RULES.write_text(f"novi:\n  page_size: {NOVI_PAGE}\nlists:\n  - list_id: {LIST}\n    max_removals: 5000\n")
    Setup.tool = args.tool
    result = {"started_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}, {platform.machine()}",
              "ledger": args.ledger, "tool": str(args.tool),
              "repeat": args.repeat, "churn": args.churn, "runs": [], "throughput": [], "planner": []}
    save = lambda: args.json.write_text(json.dumps(result, indent=1))  # noqa: E731 - after every step
    with Peers() as peers, ledger_server(args.ledger):
        for size in args.sizes:
            size_runs(peers, size, args.repeat, args.churn, args.bridge_quiet_days_up_to, args.bridge_up_to,
                      keep=lambda run: (result["runs"].append(run), save()))
        if args.throughput:
            result["throughput"] = throughput(peers, args.throughput, args.workers, args.repeat)
            save()
        say("Counting the task runs Prefect recorded")
        counts = count_task_runs([r["flow_run_id"] for r in result["runs"]])
        for run in result["runs"]:
            run["task_runs"] = counts[run["flow_run_id"]]
    result["start_up"] = start_up(max(args.repeat, 3))
    result["planner"] = planner(args.planner_sizes, args.repeat)
    save()
    print(markdown(result))
    say(f"Raw figures: {args.json}")


if __name__ == "__main__":
    main()
