"""What the integration tests share: an independent view of who belongs, and a recorded sync."""

from __future__ import annotations

import os
import re
import time
from contextlib import contextmanager
from unittest import mock

import yaml
from requests.adapters import HTTPAdapter

from flows.sync import sync_lists

VALID = re.compile(r"[a-z0-9.+_'-]+@[a-z0-9-]+(\.[a-z0-9-]+)+", re.IGNORECASE)


def expected(records: list[dict], statuses=("current", "grace_period"), group: str | None = None,
             everyone: list[dict] | None = None) -> dict[str, str]:
    """Who should be on a list (address → display name), worked out here independently of the planner.

    An address several records share has one name on every list (Mailman keeps one an address):
    a person's before a company's, an active record's first, then the smallest id's, among
    `everyone` (default `records`)."""
    names: dict[str, str] = {}
    for r in sorted(everyone or records, key=lambda r: (r["CustomerType"] != "Person", r["Active"] is not True,
                                                         r["UniqueID"])):
        name = " ".join(p for p in (r["FirstName"], r["LastName"]) if p) or r["Name"] or ""
        if name:
            names.setdefault(_address(r), name)
    chosen: dict[str, str] = {}
    for r in sorted(records, key=lambda r: r["UniqueID"]):
        raw = (r["Email"] or "").strip() or (r["AccountEmail"] or "").strip()
        local, _, domain = raw.rpartition("@")
        address = f"{local.replace(' ', '+')}@{domain}"
        if not local or not VALID.fullmatch(address) or address.endswith("."):
            continue
        in_group = group is None or any(g["GroupName"] == group for g in (r["Groups"] or []))
        if r["Active"] is True and r["MemberStatus"] in statuses and not r["UnsubscribeFromEmails"] and in_group:
            chosen.setdefault(address.lower(), names.get(address.lower(), ""))
    return chosen


def _address(record: dict) -> str:
    raw = (record["Email"] or "").strip() or (record["AccountEmail"] or "").strip()
    local, _, domain = raw.rpartition("@")
    return f"{local.replace(' ', '+')}@{domain}".lower()


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


@contextmanager
def worker_deployment(world, tmp_path, rules, ledger: str, pool: str, **parameters):
    """prefect.yaml's deployments under this test's names and pool (no schedules), the run's
    parameters naming `rules` and the tests' blocks, and a real process worker for them, every
    process on `ledger`; yields the nightly full sync's deployment name."""
    from prefect.settings import PREFECT_API_URL

    from sandbox import deploy as deployments
    from sandbox.mailman import free_port
    from sandbox.servers import stop

    tag = world["tag"]
    prefect_file = deployments.deployment_file(
        tmp_path / "prefect.yaml", {"rules_path": str(rules), "novi_block": "it-novi", "mailman_block": "it-mailman",
                                    **parameters}, pool=f"{pool}-{tag}", suffix=f"-{tag}", schedules=False)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "NOVI_MAILMAN_LEDGER": ledger,
           "NOVI_MAILMAN_REPORTS": str(tmp_path / "reports"), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    deployments.deploy(prefect_file, env, pool=f"{pool}-{tag}")
    deployments.start_worker(tmp_path, env, free_port(), pool=f"{pool}-{tag}")
    try:
        yield f"sync-lists/nightly-full-sync-{tag}"
    finally:
        stop("worker", tmp_path)
