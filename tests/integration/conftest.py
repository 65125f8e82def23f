"""Real peers for the integration tests: the Novi sandbox over HTTP and a real Mailman core.

Both start once per test session (Mailman with its mail runners and an SMTP sink) and are
always stopped at the end, by PID. A test parametrized with
`@pytest.mark.parametrize("core_under_test", EACH_CORE, indirect=True)` runs against the current
core and the oldest supported one (started on first use, in its own virtualenv).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path

import pytest
import requests

from sandbox.mailman import ADMIN_PASS, CURRENT, OLDEST, MailmanAdmin, MailmanCore, free_port
from tasks.blocks import MailmanCredentials, NoviCredentials

SANDBOX_KEY = "integration-sandbox-key-5d1f"
EACH_CORE = [CURRENT, OLDEST]


class SandboxControl:
    """The sandbox's control API, as the tests drive it."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Basic {key}"

    def call(self, method: str, path: str, **kwargs):
        response = self.session.request(method, f"{self.url}{path}", timeout=30, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None

    def reset(self, size: int, seed: int, domain: str, page_cap: int = 1000) -> None:
        self.call("POST", "/_sandbox/reset", json={"size": size, "seed": seed, "domains": [domain],
                                                   "page_cap": page_cap})

    def churn(self, **counts) -> dict:
        return self.call("POST", "/_sandbox/churn", json=counts)

    def records(self) -> list[dict]:
        """Every record, read straight from the API (the tests' own view of Novi)."""
        total = self.call("GET", "/api/members", params={"pageSize": 1, "offset": 0})["TotalCount"]
        out = []
        while len(out) < total:
            out += self.call("GET", "/api/members", params={"pageSize": 1000, "offset": len(out)})["Results"]
        return out

    def edit(self, unique_id: str, **fields) -> dict:
        return self.call("PATCH", f"/_sandbox/members/{unique_id}", json=fields)


@pytest.fixture(scope="session")
def novi_sandbox():
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "sandbox.novi", "--port", str(port), "--size", "50",
                                "--key", SANDBOX_KEY], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    control = SandboxControl(f"http://127.0.0.1:{port}", SANDBOX_KEY)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                control.call("GET", "/_sandbox/state")
                break
            except requests.RequestException:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the Novi sandbox did not start") from None
                time.sleep(0.2)
        yield control
    finally:
        process.terminate()
        process.wait(timeout=15)


def _running(core: MailmanCore):
    core.start()
    try:
        yield core
    finally:
        core.stop()


@pytest.fixture(scope="session")
def mailman_core(tmp_path_factory):
    home = Path(os.environ.get("NOVI_MAILMAN_TEST_MAILMAN_HOME", tmp_path_factory.mktemp("mailman")))
    yield from _running(MailmanCore(home=home, port=free_port(), mail=True))


@pytest.fixture(scope="session")
def oldest_core(tmp_path_factory):
    yield from _running(MailmanCore(home=tmp_path_factory.mktemp("mailman-oldest"), port=free_port(), mail=True,
                                    core=OLDEST))


@pytest.fixture(scope="session")
def oldest_block(prefect_server, oldest_core) -> str:
    MailmanCredentials(rest_url=oldest_core.rest_url, password=ADMIN_PASS).save("it-mailman-oldest", overwrite=True)
    return "it-mailman-oldest"


@pytest.fixture
def core_under_test(request) -> tuple[MailmanCore, str]:
    """The core a test runs against and its block: the current one unless parametrized."""
    if getattr(request, "param", CURRENT) == OLDEST:
        return request.getfixturevalue("oldest_core"), request.getfixturevalue("oldest_block")
    request.getfixturevalue("real_blocks")
    return request.getfixturevalue("mailman_core"), "it-mailman"


@pytest.fixture(scope="session")
def real_blocks(prefect_server, novi_sandbox, mailman_core):
    NoviCredentials(site_url=novi_sandbox.url, api_key=SANDBOX_KEY, requests_per_second=20).save(
        "it-novi", overwrite=True)
    MailmanCredentials(rest_url=mailman_core.rest_url, password=ADMIN_PASS).save("it-mailman", overwrite=True)


@pytest.fixture
def world(real_blocks, novi_sandbox, core_under_test, request):
    """A fresh sandbox site on a mail domain of this test's own, and an admin for Mailman."""
    core, block = core_under_test
    tag = uuid.uuid4().hex[:8]  # a fresh mail domain per test: addresses never meet across tests
    domain = f"t{tag}.example.org"
    seed = zlib.crc32(request.node.name.encode()) % 10_000  # the same data every time a test runs
    novi_sandbox.reset(size=120, seed=seed, domain=domain)
    return {"novi": novi_sandbox, "core": core, "admin": MailmanAdmin(core.rest_url),
            "domain": domain, "tag": tag, "seed": seed, "mailman_block": block}


@pytest.fixture
def deployed(world, tmp_path, isolated_ledger):
    """prefect.yaml's deployments under names and a pool of this test's own, and a worker for them
    (the approval tests)."""
    from tests.integration.helpers import lists_for, sync, worker_deployment

    (members,) = lists_for(world, "approved")
    rules = tmp_path / "rules.yaml"
    first, _ = sync(tmp_path, [{"list_id": members}])  # writes rules.yaml, and the list starts in step
    assert first.is_completed(), first.message
    with worker_deployment(world, tmp_path, rules, str(isolated_ledger), "it-pool") as deployment:
        yield {"list": members, "deployment": deployment}
