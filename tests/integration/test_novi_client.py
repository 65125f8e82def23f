"""The Novi client against the sandbox over HTTP: paging under a cap, 429s, and faults."""

from __future__ import annotations

import pytest

from tasks.errors import IncompleteSweep, TransientHTTPError, UnexpectedResponse
from tasks.novi import READ_RETRIES, NoviClient
from tests.integration.conftest import SANDBOX_KEY



@pytest.fixture
def site(novi_sandbox):
    novi_sandbox.reset(size=230, seed=11, domain="client.example.org", page_cap=40)
    yield novi_sandbox
    novi_sandbox.call("DELETE", "/_sandbox/faults")


def client(site, per_second=None, sleep=None) -> NoviClient:
    return NoviClient(f"{site.url}/api/", SANDBOX_KEY, requests_per_second=per_second, sleep=sleep)


def test_whole_sweep_under_a_server_cap(site):
    records = client(site).members(page_size=100)
    assert len(records) == 230 == len({r["UniqueID"] for r in records})
    assert site.call("GET", "/_sandbox/state")["pages_served"] == 6  # ceil(230 / 40)


def test_short_pages_lose_nothing(site):
    site.call("POST", "/_sandbox/faults", json={"short_offsets": [0, 40]})
    assert len(client(site).members(page_size=40)) == 230


@pytest.mark.parametrize("retry_after", [True, False], ids=["with-retry-after", "without"])
def test_rate_limited_sweep_waits_and_completes(site, retry_after):
    site.call("POST", "/_sandbox/faults", json={"rate_limit_per_second": 3, "send_retry_after": retry_after})
    assert len(client(site).members(page_size=40)) == 230


@pytest.mark.parametrize(("faults", "error"), [
    ({"fail_offsets": [80]}, TransientHTTPError),
    ({"html_offsets": [40]}, UnexpectedResponse),
    ({"total_changes_after_pages": 2}, IncompleteSweep),
], ids=["500-page", "html-200", "total-changes"])
def test_faults_fail_the_sweep(site, faults, error):
    site.call("POST", "/_sandbox/faults", json=faults)
    pauses: list[float] = []
    with pytest.raises(error):
        client(site, sleep=pauses.append).members(page_size=40)
    # a failing page is retried (with growing pauses) before the sweep gives up; the others are not
    assert len(pauses) == (READ_RETRIES if error is TransientHTTPError else 0)


def test_one_member_and_not_found(site):
    novi = client(site)
    first = novi.members(page_size=40)[0]
    assert novi.member(first["UniqueID"])["Email"] == first["Email"]
    assert novi.member("00000000-0000-0000-0000-000000000000") is None
