"""No API key or password in anything a run leaves behind, successful or failing.

Whole syncs run with known secret values; every log record, the console, the state
messages, the exceptions and their tracebacks, the artifacts, the plan CSVs, the ledger and
the command line's output are scanned for them.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import traceback

import pytest
import requests
import responses
from prefect.artifacts import Artifact
from typer.testing import CliRunner

from flows.cli import app
from flows.sync import sync_lists
from tasks.blocks import MailmanCredentials, NoviCredentials
from tasks.report import PLAN_KEY, SUMMARY_KEY, artifact_key
from tests.conftest import novi_record
from tests.fakes import MAILMAN_REST, NOVI_SITE, FakeMailman, FakeNovi


NOVI_KEY = "nk-7Hq2-SECRET-novi-9f3a"
MAILMAN_PASSWORD = "mp-Zx81-SECRET-mailman-c4d2"
LIST = "members.example.org"


@pytest.fixture(scope="module")
def secret_blocks(prefect_server):
    NoviCredentials(site_url=NOVI_SITE, api_key=NOVI_KEY, read_retries=1).save("secret-novi", overwrite=True)
    MailmanCredentials(rest_url=MAILMAN_REST, password=MAILMAN_PASSWORD).save("secret-mailman", overwrite=True)


def records():
    return [novi_record(f"m{i}", f"m{i}@example.org") for i in range(12)]


def ok(mock):
    FakeNovi(records()).install(mock)
    FakeMailman({LIST: {"m0@example.org": "Old"}}).install(mock)
    return []


# Each failing peer answers everything else rightly, so that the run reaches the answer carrying the secret; it
# returns the responses the run must have read, or the scan below would pass without having seen them.

def novi_refuses(mock):
    FakeMailman({LIST: {}}).install(mock)
    return [mock.get(f"{NOVI_SITE}/api/members", status=401, json={"Message": f"bad key {NOVI_KEY}"})]


def novi_down(mock):
    FakeMailman({LIST: {}}).install(mock)
    return [mock.get(f"{NOVI_SITE}/api/members", body=requests.ConnectionError(f"refused for key {NOVI_KEY}"))]


def novi_echoes_the_key(mock):
    FakeMailman({LIST: {}}).install(mock)
    return [mock.get(f"{NOVI_SITE}/api/members", status=400, json={"Message": f"key {NOVI_KEY} is not valid here"})]


def novi_echoes_the_key_across_the_cut(mock):
    """The key placed where a cut at 300 characters would keep all of it but its last letter."""
    FakeMailman({LIST: {}}).install(mock)
    return [mock.get(f"{NOVI_SITE}/api/members", status=400,
                     json={"Message": "x" * (300 - len(NOVI_KEY) + 1) + NOVI_KEY})]


def mailman_answering(mock, status: int, description: str):
    """Novi and Mailman's version answer; the roster read answers `status` with `description`."""
    FakeNovi(records()).install(mock)
    mock.get(f"{MAILMAN_REST}/3.1/system/versions", json={"mailman_version": "GNU Mailman 3.3.10 (Tom Sawyer)"})
    return [mock.get(f"{MAILMAN_REST}/3.1/lists/{LIST}/roster/member", status=status,
                     json={"title": str(status), "description": description})]


def mailman_echoes_the_password(mock):
    return mailman_answering(mock, 500, f"config admin_pass={MAILMAN_PASSWORD} failed")


def mailman_echoes_its_authorization_header(mock):
    import base64

    basic = base64.b64encode(f"restadmin:{MAILMAN_PASSWORD}".encode()).decode()
    return mailman_answering(mock, 500, f"bad header Authorization: Basic {basic}")


def mailman_refuses(mock):
    return mailman_answering(mock, 401, f"password {MAILMAN_PASSWORD} is wrong")


def writes_fail(mock):
    FakeNovi(records()).install(mock)
    mailman = FakeMailman({LIST: {}})
    mailman.fail_subscribe = {"m3@example.org"}
    mailman.install(mock)
    return []


@pytest.mark.parametrize("peers", [ok, novi_refuses, novi_down, novi_echoes_the_key, novi_echoes_the_key_across_the_cut,
                                   mailman_refuses, mailman_echoes_the_password,
                                   mailman_echoes_its_authorization_header, writes_fail],
                         ids=["success", "novi-401", "novi-unreachable", "novi-echoes-key", "novi-echoes-key-at-the-cut",
                              "mailman-401", "mailman-echoes-password", "mailman-echoes-basic-auth",
                              "failed-writes"])
def test_no_secret_in_anything_a_run_leaves(peers, secret_blocks, tmp_path, caplog, capsys, isolated_ledger,
                                           monkeypatch):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr("tasks.http.backoff", lambda attempt: 0.01)  # every retry is still made and logged, at once
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        must_read = peers(mock)
        state = sync_lists(list_id=LIST, novi_block="secret-novi", mailman_block="secret-mailman",
                           reports_dir=str(tmp_path), return_state=True)
        cli = CliRunner().invoke(app, ["sync", "--list", LIST, "--json", "--novi-block", "secret-novi",
                                       "--mailman-block", "secret-mailman"], env={"NOVI_MAILMAN_REPORTS": str(tmp_path)})
        human = CliRunner().invoke(app, ["plan", "--list", LIST, "--novi-block", "secret-novi",
                                         "--mailman-block", "secret-mailman"])
    assert all(response.call_count for response in must_read), "the run never read the answer carrying the secret"
    captured = [caplog.text, *(r.getMessage() for r in caplog.records), capsys.readouterr().out,
                capsys.readouterr().err, state.message or "", cli.output, human.output]
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        captured.append("".join(traceback.format_exception(result)))
        captured.append(json.dumps(getattr(result, "summary", None) or {}))
    else:
        captured.append(json.dumps(result))
    keys = [artifact_key(key, dry, list_id) for dry in (False, True) for key, list_id in
            ((SUMMARY_KEY, None), (PLAN_KEY, "members.example.org"))]
    for key in keys:
        artifact = Artifact.get(key)
        captured.append(str(artifact.data) if artifact else "")
    captured += [path.read_text() for path in tmp_path.glob("*.csv")]
    if isolated_ledger.exists():
        with sqlite3.connect(isolated_ledger) as db:
            for (table,) in db.execute("select name from sqlite_master where type='table'"):
                captured.append(json.dumps(db.execute(f"select * from {table}").fetchall(), default=str))
    text = "\n".join(captured)
    assert "sync-lists" in text and "Novi" in text and len(text) > 2000  # the scan saw the run's real output
    import base64

    assert NOVI_KEY[:-1] not in text  # not even all but its last letter
    assert MAILMAN_PASSWORD not in text
    assert base64.b64encode(f"restadmin:{MAILMAN_PASSWORD}".encode()).decode() not in text


# one secret, one way out each (5a-e) ------------------------------------------------------

def test_a_key_with_a_line_break_is_refused_when_saved_and_never_quoted():
    """requests raises InvalidHeader quoting the whole header for a key ending in \\r or \\n."""
    from pydantic import ValidationError

    for bad in (NOVI_KEY + "\r\n", NOVI_KEY + "\n", " " + NOVI_KEY):
        with pytest.raises(ValidationError) as caught:
            NoviCredentials(site_url=NOVI_SITE, api_key=bad)
        assert NOVI_KEY not in str(caught.value) and "line break" in str(caught.value)
    with pytest.raises(ValidationError):
        MailmanCredentials(rest_url=MAILMAN_REST, password=MAILMAN_PASSWORD + "\n")


def test_a_key_that_reaches_requests_with_a_line_break_is_masked_anyway():
    """A block saved before the check existed: the failure names the error type, not the header."""
    from tasks.errors import PermanentHTTPError
    from tasks.novi import NoviClient

    client = NoviClient(NOVI_SITE, NOVI_KEY + "\r\n", read_retries=0)
    with responses.RequestsMock(assert_all_requests_are_fired=False):
        with pytest.raises(PermanentHTTPError) as caught:
            client.member_total()
    told = "".join(traceback.format_exception(caught.value))
    assert NOVI_KEY not in told and "InvalidHeader" in told


def test_blocks_refuses_a_url_with_credentials_in_one_line_without_showing_it(prefect_server):
    result = CliRunner().invoke(app, ["blocks", "--novi-url", "https://admin:hunter2-SECRET@novi.test",
                                      "--mailman-url", MAILMAN_REST],
                                env={"NOVI_API_KEY": NOVI_KEY, "MAILMAN_PASSWORD": MAILMAN_PASSWORD})
    assert result.exit_code == 1
    assert "hunter2-SECRET" not in result.output and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0 and "must not hold a user or password" in result.output


@pytest.mark.parametrize("url", [
    "postgresql+psycopg://sync@127.0.0.1:1/ledger?password=TOPSECRET-Q",
    "postgresql+psycopg://sync:TOPSECRET-Q@127.0.0.1:1/ledger",
    "not a url TOPSECRET-Q",
], ids=["password-in-query", "password-in-userinfo", "unparseable"])
def test_a_ledger_url_never_shows_its_password(url):
    from tasks.ledger import Ledger, LedgerError

    with pytest.raises(LedgerError) as caught:
        Ledger(url)
    assert "TOPSECRET-Q" not in "".join(traceback.format_exception(caught.value))
    if "://" in url:
        assert "TOPSECRET-Q" not in Ledger.redacted(url) and "***" in Ledger.redacted(url)
