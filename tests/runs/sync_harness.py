"""What the sync-run tests share: the fakes' credentials, a population, one run through mocked HTTP."""

from __future__ import annotations

import responses

from flows.sync import sync_lists
from tests.conftest import novi_record

NOVI_KEY = "NOVI-SECRET-KEY-0123456789"
MAILMAN_PASSWORD = "MAILMAN-SECRET-PW-987"
LIST = "members.example.org"


def population():
    """5 eligible (2 already on the list, one under an old name), 3 lapsed on the list, 1 stranger."""
    records = [novi_record(f"cur-{i}", f"cur{i}@example.org", first="Cur", last=str(i)) for i in range(5)]
    records += [novi_record(f"exp-{i}", f"exp{i}@example.org", status="expired") for i in range(3)]
    roster = {"cur0@example.org": "Cur 0", "cur1@example.org": "Old Name",
              "exp0@example.org": "E0", "exp1@example.org": "E1", "exp2@example.org": "E2",
              "staff@example.org": "Staff"}
    return records, roster


def run(novi, mailman, tmp_path, **params):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        novi.install(mock)
        mailman.install(mock)
        state = sync_lists(**{"list_id": LIST, **params}, novi_block="test-novi", mailman_block="test-mailman",
                           reports_dir=str(tmp_path), return_state=True)
        calls = [(c.request.method, c.request.url) for c in mock.calls]
    return state, calls


def writes(calls):
    return [c for c in calls if c[0] != "GET"]

