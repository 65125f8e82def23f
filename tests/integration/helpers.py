"""What the integration tests share: an independent view of who belongs, and a recorded sync."""

from __future__ import annotations

import re
import time
from unittest import mock

import yaml
from requests.adapters import HTTPAdapter

from flows.sync import sync_lists

VALID = re.compile(r"[a-z0-9.+_'-]+@[a-z0-9-]+(\.[a-z0-9-]+)+", re.IGNORECASE)


def expected(records: list[dict], statuses=("current", "grace_period"), group: str | None = None) -> dict[str, str]:
    """Who should be on a list (address → display name), worked out here independently of the planner."""
    chosen: dict[str, str] = {}
    for r in sorted(records, key=lambda r: r["UniqueID"]):
        raw = (r["Email"] or "").strip() or (r["AccountEmail"] or "").strip()
        local, _, domain = raw.rpartition("@")
        address = f"{local.replace(' ', '+')}@{domain}"
        if not local or not VALID.fullmatch(address) or address.endswith("."):
            continue
        in_group = group is None or any(g["GroupName"] == group for g in (r["Groups"] or []))
        if r["Active"] is True and r["MemberStatus"] in statuses and not r["UnsubscribeFromEmails"] and in_group:
            name = " ".join(p for p in (r["FirstName"], r["LastName"]) if p) or r["Name"] or ""
            chosen.setdefault(address.lower(), name)
    return chosen


def sync(tmp_path, lists: list[dict], dry_run: bool = False, novi_block: str = "it-novi",
         mailman_block: str = "it-mailman", **params):
    """One run of the flow with these list rules; the state and the write requests it sent."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"lists": lists}))
    sent: list[tuple[str, str]] = []
    original = HTTPAdapter.send

    def record(adapter, request, *args, **kwargs):  # every request the clients send, on its way out
        sent.append((request.method, request.url))
        return original(adapter, request, *args, **kwargs)

    with mock.patch.object(HTTPAdapter, "send", record):
        state = sync_lists(rules_path=str(rules), novi_block=novi_block, mailman_block=mailman_block,
                           dry_run=dry_run, reports_dir=str(tmp_path / "reports"), return_state=True, **params)
    return state, [(method, url) for method, url in sent if method != "GET"]


def lists_for(world, *names: str) -> list[str]:
    return [world["admin"].recreate_list(f"{name}-{world['tag']}@example.org") for name in names]


def wait_for(predicate, seconds: float = 45.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.5)
    return predicate()


def mail_to(core, domain: str) -> list[str]:
    """Recipients at `domain` of every message that reached the SMTP sink."""
    return [str(m["X-RcptTo"]).lower() for m in core.messages() if str(m["X-RcptTo"]).lower().endswith("@" + domain)]


def flow_run_processes(worker_pid: int) -> list[int]:
    """The `python -m prefect.engine` processes below a worker: its flow runs, still running."""
    from pathlib import Path

    from tasks.host import process_alive

    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # ended while we looked
            continue
    below, frontier = set(), {worker_pid}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - below
        below |= frontier
    found = []
    for pid in below:
        try:
            if b"prefect.engine" in Path(f"/proc/{pid}/cmdline").read_bytes() and process_alive(pid):
                found.append(pid)
        except OSError:
            continue
    return found


def stop_worker_after_its_runs(state, name: str = "worker", settle: float = 30) -> None:
    """Stop a worker once the flow runs it started have ended on their own (up to `settle` s).

    A run's final state is saved before its process has shut down; stopped then, the worker
    forwards SIGINT to that process, which hung until the 20-s kill (each teardown of
    test_approval took 20 s; the worker alone exits on SIGTERM in 0.5 s)."""
    from sandbox.servers import stop

    pid_file = state / f"{name}.pid"
    if pid_file.exists():
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline and flow_run_processes(int(pid_file.read_text())):
            time.sleep(0.2)
    stop(name, state)
