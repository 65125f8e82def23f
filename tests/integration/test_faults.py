"""Fault injection over the Novi sandbox and a real Mailman core, one test per scenario row.

Every row starts from a list filled by a first sync, then makes churn (so a run would have
work to do), injects one fault and syncs. The row says how the run must end, what the roster
must then be (`unchanged`: exactly as before; `eligible`: what Novi now says, plus the
addresses the rows keep), and that no mail went out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable
from unittest import mock

import pytest
from requests.adapters import HTTPAdapter

from tasks.blocks import MailmanCredentials, NoviCredentials
from tests.integration.conftest import SANDBOX_KEY
from tests.integration.helpers import expected, lists_for, mail_to, sync



@pytest.fixture(scope="module")
def fault_blocks(real_blocks, novi_sandbox, mailman_core):
    """Blocks that fail fast: one read retry, a one-second timeout, and wrong credentials."""
    NoviCredentials(site_url=novi_sandbox.url, api_key=SANDBOX_KEY, requests_per_second=20, read_retries=1,
                    timeout_seconds=1).save("it-novi-fast", overwrite=True)
    NoviCredentials(site_url=novi_sandbox.url, api_key="not-the-key", read_retries=1).save(
        "it-novi-bad-key", overwrite=True)
    MailmanCredentials(rest_url=mailman_core.rest_url, password="not-the-password").save(
        "it-mailman-bad-password", overwrite=True)


@dataclass
class Row:
    name: str
    inject: Callable[[dict], dict]      # (world) -> extra flow parameters, after the churn
    state: str                          # completed | failed | refused
    roster: str                         # unchanged | eligible
    says: str = ""                      # a phrase the run's message must hold
    keeps: Callable[[dict], set] = field(default=lambda world: set())  # addresses that must stay


def faults(**switches):
    def inject(world):
        world["novi"].call("POST", "/_sandbox/faults", json=switches)
        return {}
    return inject


def reset_to(size):
    def inject(world):
        world["novi"].reset(size=size, seed=world["seed"], domain=world["domain"], page_cap=40)
        return {}
    return inject


def lapse_half(world):
    for record in world["novi"].records()[::2]:
        world["novi"].edit(record["UniqueID"], MemberStatus="expired")
    return {}


BAD_DATA = {"Active": "yes", "MemberStatus": 5, "Groups": "Board", "CustomerType": None, "MemberType": 7}


def bad_data(world):
    """Members on the list whose records now carry broken fields: quarantined, never removed."""
    by_address = {(r["Email"] or "").lower(): r for r in world["novi"].records()}
    plain = {a for a, r in by_address.items() if r["Email"] == r["AccountEmail"] and "@" in a}
    on_list = sorted(set(world["before"]) & plain)[:len(BAD_DATA)]
    for address, (name, value) in zip(on_list, BAD_DATA.items()):
        world["novi"].edit(by_address[address]["UniqueID"], **{name: value})
    world["kept"] = set(on_list)
    newcomer = by_address[sorted(plain - set(world["before"]))[0]]  # a record not on the list
    world["novi"].edit(newcomer["UniqueID"], MemberStatus="current", Active=True, UnsubscribeFromEmails=False,
                       Email="x\r\nBcc: everyone@example.org", AccountEmail="y" * 3000 + "@example.org")
    return {}


def block(**names):
    return lambda world: names


def both(*injections):
    return lambda world: {k: v for inject in injections for k, v in inject(world).items()}


ROWS = [
    Row("novi-500-page", faults(fail_offsets=[40]), "failed", "unchanged", "answered 500"),
    Row("novi-html-page-200", faults(html_offsets=[40]), "failed", "unchanged", "not JSON"),
    Row("novi-total-changes", faults(total_changes_after_pages=1), "failed", "unchanged", "changed from"),
    Row("novi-short-pages", faults(short_offsets=[0, 40, 80]), "completed", "eligible"),
    # a server stricter than Novi's reported limit: the client waits (default retries) and completes
    Row("novi-429-retry-after", both(faults(rate_limit_per_second=2, send_retry_after=True), block(novi_block="it-novi")),
        "completed", "eligible"),
    Row("novi-429-no-retry-after", both(faults(rate_limit_per_second=2, send_retry_after=False),
                                        block(novi_block="it-novi")), "completed", "eligible"),
    Row("novi-timeout", faults(latency_ms=1500), "failed", "unchanged", "timed out"),
    Row("novi-wrong-key", block(novi_block="it-novi-bad-key"), "failed", "unchanged", "key or password was refused"),
    Row("novi-empty", reset_to(0), "refused", "unchanged", "no Novi member is eligible"),
    Row("novi-collapse", reset_to(50), "refused", "unchanged", "down from"),
    Row("novi-mass-lapse", lapse_half, "refused", "unchanged", "removals planned"),
    Row("novi-bad-data", bad_data, "completed", "eligible", keeps=lambda world: world["kept"]),
    Row("mailman-list-missing", lambda world: world["admin"].delete_list(world["list"]) or {}, "failed", "unchanged",
        "Mailman has no list"),
    Row("mailman-wrong-password", block(mailman_block="it-mailman-bad-password"), "failed", "unchanged",
        "key or password was refused"),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_fault(row: Row, world, fault_blocks, tmp_path):
    world["novi"].reset(size=120, seed=world["seed"], domain=world["domain"], page_cap=40)
    (members,) = lists_for(world, "faults")
    world["list"] = members
    rules = [{"list_id": members}]
    first, _ = sync(tmp_path, rules, novi_block="it-novi-fast")
    assert first.is_completed(), first.message
    world["before"] = world["admin"].roster(members)
    world["novi"].churn(lapse=3, renew=3, rename=2, add=2)

    params = {"novi_block": "it-novi-fast", **row.inject(world)}
    try:
        state, writes = sync(tmp_path, rules, **params)
    finally:
        world["novi"].call("DELETE", "/_sandbox/faults")

    summary = state.result() if state.is_completed() else getattr(
        state.result(raise_on_failure=False), "summary", None) or {"state": "failed"}
    assert summary["state"] == row.state, state.message
    assert row.says in (state.message or "")
    if row.roster == "unchanged":
        assert writes == []
    if row.name == "mailman-list-missing":
        return  # the list is gone: no roster to compare
    roster = world["admin"].roster(members)
    if row.roster == "unchanged":
        assert roster == world["before"]
    else:
        assert set(roster) == set(expected(world["novi"].records())) | row.keeps(world)
    time.sleep(1)
    assert mail_to(world["core"], world["domain"]) == []


def test_a_failing_novi_read_stops_the_roster_reads_beside_it_and_nothing_is_written(world, fault_blocks, tmp_path):
    """Novi and the rosters are read at once; Novi's first page fails (500, then its one retry),
    while twelve lists' rosters, each made slow like a big list's, are being read beside it."""
    world["novi"].reset(size=120, seed=world["seed"], domain=world["domain"], page_cap=40)
    lists = lists_for(world, *(f"stop{i}" for i in range(12)))
    roster_reads = []
    original = HTTPAdapter.send

    def slow_rosters(adapter, request, *args, **kwargs):
        if "/roster/member" in request.url:
            roster_reads.append(request.url)
            time.sleep(0.5)
        return original(adapter, request, *args, **kwargs)

    world["novi"].call("POST", "/_sandbox/faults", json={"fail_offsets": [0]})
    try:
        with mock.patch.object(HTTPAdapter, "send", slow_rosters):
            state, writes = sync(tmp_path, [{"list_id": lid} for lid in lists], novi_block="it-novi-fast")
    finally:
        world["novi"].call("DELETE", "/_sandbox/faults")
    assert state.is_failed() and "answered 500" in state.message  # Novi's failure, not a stopped read's
    assert writes == []
    # The rosters were being read (at once with Novi), and stopped: most lists were never read.
    assert 0 < len(roster_reads) <= len(lists) // 2, roster_reads
    assert all(world["admin"].roster(lid) == {} for lid in lists)
