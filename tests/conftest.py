"""Shared fixtures: Novi records, roster frames, and one Prefect test server per session."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import pandas as pd
import pytest

from sandbox import postgres
from tasks.core import addresses
from tasks.core.schema import REGULAR, ROSTER_COLUMNS, Delivery


def novi_record(uid: str, email: str | None = None, *, first: str | None = "Pat", last: str | None = None,
                status: str = "current", active: bool = True, person: bool = True, groups: list | None = None,
                member_type: str | None = "Regular", opted_out: bool = False, **extra) -> dict:
    """A member record with Novi's exact field names and casing."""
    record = {
        "UniqueID": uid, "Email": email, "AccountEmail": None, "PersonalEmail": None,
        "FirstName": first, "LastName": last if last is not None else uid.upper(), "Name": None,
        "Active": active, "MemberStatus": status, "MemberSubStatus": None,
        "MembershipExpires": "2027-06-30T00:00:00", "MemberSince": "2019-01-01T00:00:00",
        "MemberType": {"UniqueID": f"type-{member_type}", "Name": member_type, "Description": "",
                       "ForCompanies": False} if member_type else None,
        "CustomerType": "Person" if person else "Company",
        "ParentCustomerUniqueID": None,
        "Groups": [{"GroupUniqueID": f"grp-{g}", "GroupName": g, "InheritingMember": False,
                    "JoinDate": "2020-01-01T00:00:00-05:00"} for g in groups] if groups else None,
        "UnsubscribeFromEmails": opted_out,
        "CustomFields": {}, "LastUpdatedDate": "2026-10-28T13:31:52.4566667-04:00",
    }
    record.update(extra)
    return record


def roster_frame(list_id: str, rows: list[tuple]) -> pd.DataFrame:
    """A roster frame from (email, display_name[, held or a delivery status[, delivery_mode[,
    moderation_action]]]) tuples, as MailmanClient.roster builds it."""
    def status(r):
        value = r[2] if len(r) > 2 else False
        return value if isinstance(value, str) else Delivery.BY_MODERATOR if value else Delivery.ENABLED
    email = pd.Series([r[0].lower() for r in rows], dtype="string")
    return pd.DataFrame({
        "list_id": pd.Series([list_id] * len(rows), dtype="string"),
        "email": email,
        "match_key": addresses.match_key(email),
        "display_name": pd.Series([r[1] for r in rows], dtype="string"),
        "member_id": pd.Series([f"mid-{r[0].lower()}" for r in rows], dtype="string"),
        "delivery_mode": pd.Series([r[3] if len(r) > 3 else REGULAR for r in rows], dtype="string"),
        "moderation_action": pd.Series([r[4] if len(r) > 4 else "" for r in rows], dtype="string"),
        "delivery_status": pd.Series([status(r) for r in rows], dtype="string"),
        "account": pd.Series([None] * len(rows), dtype="string"),
    }, columns=ROSTER_COLUMNS)


# The tests by depth: core/ (the pure core, no Prefect), edge/ (clients, ledger, report, layout;
# HTTP mocked), runs/ (flows and the command line under a Prefect test server; not "flows/",
# which would shadow the product's package under pytest's imports), integration/ (real peers).
INTEGRATION = Path(__file__).parent / "integration"
RUNS = Path(__file__).parent / "runs"


SLOWEST_FILES = ("test_approval_lease.py", "test_approval.py", "test_crash.py", "test_interrupted.py")


def pytest_collection_modifyitems(items) -> None:
    """Markers from where a test lives and what it needs, never set by hand: `integration` for
    the tests under tests/integration (real peers), `flow` for those, for tests/runs and for
    every test that needs a Prefect server (the `prefect_server` fixture). `make unit` runs the rest."""
    for item in items:
        if INTEGRATION in item.path.parents:
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.flow)
        elif RUNS in item.path.parents or "prefect_server" in item.fixturenames:
            item.add_marker(pytest.mark.flow)
    # Longest first (`make test` hands whole files to its workers in this order): the file that
    # waits out a lease renewal (~6.5 min on one worker) starts at once instead of last, then
    # the other tests on real peers, then the quick ones fill in (README, "The two commands").
    items.sort(key=lambda item: (item.path.name not in SLOWEST_FILES, INTEGRATION not in item.path.parents,
                                 RUNS not in item.path.parents))


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect test server for every flow test in the session (it takes ~15 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(autouse=True)
def isolated_ledger(tmp_path, monkeypatch):
    """Every test gets its own ledger file, so no run remembers another test's runs."""
    path = tmp_path / "ledger.sqlite"
    monkeypatch.setenv("NOVI_MAILMAN_LEDGER", str(path))
    monkeypatch.setenv("NOVI_MAILMAN_HOME", str(tmp_path / "home"))
    yield path
    # A command invoked with no Prefect server configured starts the local one in this home: a
    # test that did so by mistake would leave it running after the suite. Stopped, and said.
    from tasks import local_server

    if local_server.status() is not None:
        local_server.stop()
        pytest.fail("this test started the local Prefect server without meaning to: give it the prefect_server "
                    "fixture", pytrace=False)


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL cluster on 127.0.0.1, stopped when the session ends.

    Skipped (with the reason) where no PostgreSQL server binaries are installed; the
    SQLite variant of every ledger test still runs.
    """
    bindir = postgres.server_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb) on this machine")
    with postgres.cluster(bindir) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request, tmp_path):
    """A fresh, empty ledger database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger-under-test.sqlite'}"
    server = request.getfixturevalue("postgres_server")
    return postgres.fresh_database(server, f"ledger_{uuid.uuid4().hex[:12]}")


def last_run(ledger, state: str = "completed", kind: str = "full") -> dict | None:
    """The newest run of a kind in a final state, with its per-list figures, read straight from
    the ledger's tables (what a test checks; the tool itself never asks this)."""
    from sqlalchemy import select

    from tasks.ledger import run_lists_table, runs_table

    if not ledger.exists:
        return None
    with ledger._connect() as conn:
        run = conn.execute(select(runs_table).where((runs_table.c.state == state) & (runs_table.c.kind == kind))
                           .order_by(runs_table.c.ended_at.desc()).limit(1)).mappings().first()
        if run is None:
            return None
        lists = conn.execute(select(run_lists_table).where(run_lists_table.c.run_id == run["run_id"])).mappings().all()
    return {**dict(run), "lists": {r["list_id"]: dict(r) for r in lists}}
