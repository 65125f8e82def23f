"""The command line, run in-process against the Prefect test server and the HTTP fakes."""

from __future__ import annotations

import json

import pytest
import responses
from typer.testing import CliRunner

from flows.cli import EXIT_FAILED, EXIT_REFUSED, app
from tasks.blocks import MailmanCredentials, NoviCredentials
from tests.conftest import novi_record
from tests.fakes import MAILMAN_REST, NOVI_SITE, FakeMailman, FakeNovi


NOVI_KEY = "CLI-NOVI-KEY-abcdef"
MAILMAN_PASSWORD = "CLI-MAILMAN-PW-uvwxyz"
LIST = "members.example.org"


@pytest.fixture(scope="module")
def cli_blocks(prefect_server):
    runner = CliRunner()
    result = runner.invoke(app, ["blocks", "--novi-url", NOVI_SITE, "--mailman-url", MAILMAN_REST,
                                 "--novi-block", "cli-novi", "--mailman-block", "cli-mailman"],
                           env={"NOVI_API_KEY": NOVI_KEY, "MAILMAN_PASSWORD": MAILMAN_PASSWORD})
    assert result.exit_code == 0, result.output
    assert NOVI_KEY not in result.output and MAILMAN_PASSWORD not in result.output
    return runner


def invoke(runner, args, novi, mailman):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        novi.install(mock)
        mailman.install(mock)
        mock.add("GET", f"{MAILMAN_REST}/3.1/lists", json={"start": 0, "total_size": 1,
                                                            "entries": [{"list_id": LIST}]})
        return runner.invoke(app, [*args, "--novi-block", "cli-novi", "--mailman-block", "cli-mailman"])


def test_blocks_store_the_secrets(cli_blocks):
    novi = NoviCredentials.load("cli-novi")
    assert novi.api_key.get_secret_value() == NOVI_KEY and novi.site_url == NOVI_SITE
    assert MailmanCredentials.load("cli-mailman").password.get_secret_value() == MAILMAN_PASSWORD


def test_blocks_refuse_without_a_secret_source(prefect_server):
    result = CliRunner().invoke(app, ["blocks", "--novi-url", NOVI_SITE, "--mailman-url", MAILMAN_REST,
                                      "--novi-block", "x", "--mailman-block", "y"], env={"NOVI_API_KEY": ""})
    assert result.exit_code != 0
    assert "NOVI_API_KEY" in result.output


def test_check_reports_total_version_and_lists(cli_blocks, tmp_path):
    novi = FakeNovi([novi_record("a", "a@example.org"), novi_record("b", "b@example.org")])
    result = invoke(cli_blocks, ["check"], novi, FakeMailman({LIST: {}}))
    assert result.exit_code == 0, result.output
    assert "2 member records" in result.output and "3.3.10" in result.output and LIST in result.output


def test_check_refuses_a_core_too_old_in_one_line_naming_what_it_lacks(cli_blocks):
    mailman = FakeMailman({LIST: {}})
    mailman.version = "GNU Mailman 3.3.3 (Tom Sawyer)"
    result = invoke(cli_blocks, ["check"], FakeNovi([novi_record("a", "a@example.org")]), mailman)
    assert result.exit_code == EXIT_FAILED
    line = [line for line in result.output.splitlines() if "Mailman 3.3.3" in line]
    assert line and "older than 3.3.4" in line[0] and "digest" in line[0] and "Traceback" not in result.output


def test_check_says_a_supported_core_older_than_the_tested_ones_is_untested(cli_blocks):
    mailman = FakeMailman({LIST: {}})
    mailman.version = "GNU Mailman 3.3.5 (Tom Sawyer)"
    result = invoke(cli_blocks, ["check"], FakeNovi([novi_record("a", "a@example.org")]), mailman)
    assert result.exit_code == 0, result.output
    assert "older than 3.3.8, the oldest the tests run against" in result.output


def test_plan_json_is_one_object_and_writes_nothing(cli_blocks, tmp_path, monkeypatch):
    monkeypatch.setenv("NOVI_MAILMAN_REPORTS", str(tmp_path))
    mailman = FakeMailman({LIST: {"old@example.org": "Old"}})
    novi = FakeNovi([novi_record("a", "a@example.org"), novi_record("o", "old@example.org", status="expired")])
    result = invoke(cli_blocks, ["plan", "--list", LIST, "--json"], novi, mailman)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["dry_run"] is True and summary["changes"] == 2
    assert not mailman.writes
    assert NOVI_KEY not in result.output and MAILMAN_PASSWORD not in result.output


def test_a_run_from_the_command_line_loads_each_block_once(cli_blocks, tmp_path, monkeypatch):
    """The command checks the blocks before the run (a missing one is one line), and the run
    takes those: each load is a call to the Prefect API."""
    from tasks import blocks

    loads = []
    real_load = blocks.Block.load.__func__

    def counted(cls, name, *args, **kwargs):
        loads.append((cls.__name__, name))
        return real_load(cls, name, *args, **kwargs)

    monkeypatch.setattr(blocks.Block, "load", classmethod(counted))
    monkeypatch.setenv("NOVI_MAILMAN_REPORTS", str(tmp_path))
    result = invoke(cli_blocks, ["plan", "--list", LIST, "--json"], FakeNovi([novi_record("a", "a@example.org")]),
                    FakeMailman({LIST: {}}))
    assert result.exit_code == 0, result.output
    assert sorted(loads) == [("MailmanCredentials", "cli-mailman"), ("NoviCredentials", "cli-novi")]
    assert blocks._CHECKED == {}  # nothing left for a later run of this process


def test_sync_applies_and_a_failure_exits_non_zero(cli_blocks, tmp_path, monkeypatch):
    monkeypatch.setenv("NOVI_MAILMAN_REPORTS", str(tmp_path))
    mailman = FakeMailman({LIST: {}})
    mailman.fail_subscribe = {"b@example.org"}
    novi = FakeNovi([novi_record("a", "a@example.org"), novi_record("b", "b@example.org")])
    result = invoke(cli_blocks, ["sync", "--list", LIST, "--json"], novi, mailman)
    assert result.exit_code == EXIT_FAILED
    summary = json.loads(result.stdout)
    assert summary["state"] == "failed" and summary["outcomes"] == {"applied": 1, "failed": 1}
    assert set(mailman.names(LIST)) == {"a@example.org"}


def test_refused_run_exits_with_its_own_status(cli_blocks, tmp_path, monkeypatch):
    monkeypatch.setenv("NOVI_MAILMAN_REPORTS", str(tmp_path))
    result = invoke(cli_blocks, ["sync", "--list", LIST], FakeNovi([]), FakeMailman({LIST: {"x@example.org": "X"}}))
    assert result.exit_code == EXIT_REFUSED
    assert "allow_empty" in result.output


def test_bad_rules_file_is_a_clear_failure(cli_blocks, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("lists:\n  - list_id: members.example.org\n    lapse: hold\n")
    result = invoke(cli_blocks, ["plan", "--rules", str(rules), "--json"], FakeNovi([]), FakeMailman({LIST: {}}))
    assert result.exit_code == EXIT_FAILED
    assert "lapse" in json.loads(result.stdout)["message"]


def subscribe_then_lapse(runner, status: str) -> None:
    """Two syncs: a@example.org subscribed, then removed because Novi says `status`."""
    novi = FakeNovi([novi_record("a", "a@example.org")] + [novi_record(f"m{i}", f"m{i}@example.org")
                                                            for i in range(9)])
    mailman = FakeMailman({LIST: {}})
    assert invoke(runner, ["sync", "--list", LIST], novi, mailman).exit_code == 0
    novi.records[0]["MemberStatus"] = status
    assert invoke(runner, ["sync", "--list", LIST], novi, mailman).exit_code == 0


def test_history_shows_what_happened_to_an_address_newest_first(cli_blocks, tmp_path, monkeypatch):
    monkeypatch.setenv("NOVI_MAILMAN_REPORTS", str(tmp_path))
    subscribe_then_lapse(cli_blocks, "expired")

    result = cli_blocks.invoke(app, ["history", "A@example.org", "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert [(c["action"], c["reason"]) for c in found["changes"]] == [
        ("unsubscribe", "status expired"), ("subscribe", "eligible, not on the list")]
    assert found["lists"] == [] and found["ledger"].startswith("sqlite:///")

    shown = cli_blocks.invoke(app, ["history", "a@example.org"], env={"COLUMNS": "200"})
    assert "status expired" in shown.output and shown.output.index("unsubscribe") < shown.output.index("subscribe ")


def test_list_history_shows_what_changed_on_a_list_from_the_command_line(cli_blocks, tmp_path, monkeypatch):
    """Issue 29, item 8: "what changed on list Y this week?" at the terminal, as the flow answers it."""
    monkeypatch.setenv("NOVI_MAILMAN_REPORTS", str(tmp_path))
    subscribe_then_lapse(cli_blocks, "expired")

    result = cli_blocks.invoke(app, ["list-history", LIST.replace(".", "@", 1), "--days", "1", "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["list_id"] == LIST and len(found["changes"]) == 11
    assert (found["changes"][0]["email"], found["changes"][0]["action"]) == ("a@example.org", "unsubscribe")
    shown = cli_blocks.invoke(app, ["list-history", LIST], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert f"11 changes on {LIST}" in shown.output and "status expired" in shown.output
    assert cli_blocks.invoke(app, ["list-history", "not a list"]).exit_code == EXIT_FAILED
    nothing = cli_blocks.invoke(app, ["list-history", "other@example.org"])
    assert nothing.exit_code == 0 and "Nothing recorded on other.example.org" in nothing.output


def test_history_of_an_unknown_address_with_no_ledger_yet(prefect_server, isolated_ledger, monkeypatch):
    monkeypatch.delenv("NOVI_MAILMAN_LEDGER")  # the default ledger, in a home with no run yet
    result = CliRunner().invoke(app, ["history", "nobody@example.org"])
    assert result.exit_code == 0 and "No change recorded" in result.output and "No run has been recorded" in result.output
    assert not isolated_ledger.exists()


def test_history_on_a_ledger_path_that_is_not_there_says_so(prefect_server, isolated_ledger, monkeypatch):
    """Issue 27, item 12: a mistyped NOVI_MAILMAN_LEDGER answered "No change recorded"."""
    monkeypatch.setenv("NOVI_MAILMAN_LEDGER", str(isolated_ledger.parent / "ledgr.sqlite"))
    result = CliRunner().invoke(app, ["history", "nobody@example.org"])
    assert result.exit_code == 1 and "no ledger at sqlite:///" in result.output and "ledgr.sqlite" in result.output
    assert "No change recorded" not in result.output


# peer and user text is printed literally (issue 11, item 14) ------------------------------

def test_rich_markup_in_a_novi_error_body_is_printed_as_text(cli_blocks, tmp_path, monkeypatch):
    monkeypatch.setenv("NOVI_MAILMAN_REPORTS", str(tmp_path))
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(f"{NOVI_SITE}/api/members", status=400, json={"Message": "bad [/] request [bold]x"})
        mock.get(f"{MAILMAN_REST}/3.1/system/versions", json={"mailman_version": "GNU Mailman 3.3.10"})
        result = cli_blocks.invoke(app, ["plan", "--list", LIST, "--novi-block", "cli-novi",
                                         "--mailman-block", "cli-mailman"])
    assert result.exit_code == EXIT_FAILED, result.output
    assert "bad [/] request [bold]x" in result.output


def test_history_prints_markup_in_stored_reasons_and_arguments_literally(cli_blocks, tmp_path, monkeypatch):
    monkeypatch.setenv("NOVI_MAILMAN_REPORTS", str(tmp_path))
    subscribe_then_lapse(cli_blocks, "[/]lapsed")  # a status Novi sent, stored as a reason
    shown = cli_blocks.invoke(app, ["history", "a@example.org"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "status [/]lapsed" in shown.output
    odd = cli_blocks.invoke(app, ["history", "[bold]x@example.org"])
    assert odd.exit_code == 0 and "[bold]x@example.org" in odd.output


# expected failures are one line (item 15) --------------------------------------------------

@pytest.mark.parametrize(("args", "says"), [
    (["unlock", "a b@c.org"], "not a Mailman list id"),
    (["unlock", ""], "not a Mailman list id"),
    (["history", "x@example.org", "--ledger-block", "nosuch"], "nosuch"),
    (["history", "x@example.org"], "cannot be opened"),
], ids=["unlock-space", "unlock-empty", "history-no-block", "history-unreachable-ledger"])
def test_cli_mistakes_are_one_line_without_a_traceback(prefect_server, monkeypatch, args, says):
    if args[-1] == "x@example.org":
        monkeypatch.setenv("NOVI_MAILMAN_LEDGER", "postgresql+psycopg://nobody@127.0.0.1:1/ledger")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == EXIT_FAILED, result.output
    assert says in result.output and result.output.strip().count("\n") == 0, result.output
    assert isinstance(result.exception, SystemExit)  # typer's exit, not an escaped error


def test_a_refused_sweep_on_the_command_line_prints_no_prefect_traceback(prefect_server, tmp_path):
    """Prefect's console handler writes to the process's own stderr: run the real command."""
    import os
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    bad = tmp_path / "rules.yaml"
    bad.write_text("lists:\n  - list_id: a.example.org\n    scope: managed\n    scope: mirror\n")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    quiet = subprocess.run([sys.executable, "-m", "flows.cli", "plan", "--rules", str(bad)], env=env,
                           capture_output=True, text=True, timeout=120)
    assert quiet.returncode == EXIT_FAILED
    assert "appears twice" in quiet.stdout + quiet.stderr
    assert "Traceback" not in quiet.stdout + quiet.stderr, quiet.stderr
    loud = subprocess.run([sys.executable, "-m", "flows.cli", "--debug", "plan", "--rules", str(bad)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert loud.returncode == EXIT_FAILED and "Traceback" in loud.stderr


def test_check_reports_each_side_and_gives_up_on_a_refused_connection_after_one_short_retry(cli_blocks):
    import requests

    down = "http://mailman-down.example.org:8001"
    MailmanCredentials(rest_url=down, password=MAILMAN_PASSWORD).save("cli-mailman-down", overwrite=True)
    novi = FakeNovi([novi_record("a", "a@example.org")])
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        novi.install(mock)
        mock.add("GET", f"{down}/3.1/system/versions", body=requests.ConnectionError("refused"))
        result = cli_blocks.invoke(app, ["check", "--novi-block", "cli-novi", "--mailman-block", "cli-mailman-down"])
        tries = [c for c in mock.calls if c.request.url.startswith(down)]
    assert result.exit_code == EXIT_FAILED
    assert "Novi: connected, 1 member records" in result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("Mailman:")]
    assert "could not connect" in line and "Traceback" not in result.output
    assert len(tries) == 2  # the first try and one retry: a person is waiting


def test_a_table_printed_to_a_pipe_is_never_cut(tmp_path):
    """Cron mail, CI logs and `| tee` once got "ban.…", "elig…": a pipe gets every cell whole."""
    import os
    import subprocess
    import sys

    from tasks.ledger import Ledger
    from tests.edge.test_ledger import planned_run

    ledger_path = tmp_path / "ledger.sqlite"
    ledger = Ledger(f"sqlite:///{ledger_path}")
    list_id = "a-rather-long-list-name-for-the-committee-of-regional-chapters.example.org"
    p, outcomes, run = planned_run(list_id, 2)
    ledger.record(run, [list_id], None, outcomes, p.figures)
    env = {**os.environ, "NOVI_MAILMAN_LEDGER": str(ledger_path), "COLUMNS": ""}
    env.pop("COLUMNS")
    shown = subprocess.run([sys.executable, "-m", "flows.cli", "history", "m0@example.org"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert list_id in shown.stdout and "eligible, not on the list" in shown.stdout and "…" not in shown.stdout


def test_explain_says_which_lists_one_person_belongs_on_and_what_keeps_them_off(cli_blocks, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("lists:\n  - list_id: members@example.org\n"
                     "  - list_id: finance@example.org\n    committees: [Finance]\n    statuses: any\n"
                     "  - list_id: north@example.org\n    custom_fields: {Chapter: [North]}\n")
    seat = {"CommitteeUniqueID": "c1", "CommitteeName": "Finance", "PositionName": "Chair",
            "StartDate": "2024-01-01T00:00:00-05:00", "EndDate": "2025-12-31T00:00:00-05:00"}
    record = novi_record("ann", "ann@example.org", first="Ann", last="Lee", Committees=[seat],
                         CustomFields={"Chapter": {"CustomFieldName": "Chapter", "Value": "South"}})
    novi = FakeNovi([record, novi_record("bo", "bo@example.org")])
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        novi.install(mock)
        result = cli_blocks.invoke(app, ["explain", "ann@example.org", "--rules", str(rules), "--novi-block", "cli-novi"])
        reads = [c.request.url for c in mock.calls]
    assert result.exit_code == 0, result.output
    assert "Novi ann: Ann Lee <ann@example.org>, status current" in result.output
    assert "chair of finance (2024-01-01 to 2025-12-31)" in result.output and "Chapter=South" in result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.startswith("│")}
    assert "yes" in rows["members.example.org"]
    assert "committee term ended" in rows["finance.example.org"]
    assert "custom field Chapter is south, not north" in rows["north.example.org"]
    assert len(reads) == 1 and "email=ann%40example.org" in reads[0]  # that person only


def test_explain_reads_the_persons_company_and_judges_them_by_it(cli_blocks, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("lists:\n  - list_id: contacts@example.org\n    contacts_of_companies: primary\n"
                     "  - list_id: members@example.org\n    inheriting: include\n")
    acme = novi_record("acme", None, person=False, first=None, last="", Name="Acme Ltd", status="expired",
                       PrimaryContactUniqueId="ann")
    ann = novi_record("ann", "ann@example.org", first="Ann", last="Lee", status="inheriting",
                      ParentCustomerUniqueID="acme")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        FakeNovi([ann, acme]).install(mock)
        result = cli_blocks.invoke(app, ["explain", "ann@example.org", "--rules", str(rules), "--novi-block", "cli-novi"])
        reads = [c.request.url for c in mock.calls]
    assert result.exit_code == 0, result.output
    assert "company: Acme Ltd (expired)" in result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.startswith("│")}
    # Novi cannot say which other companies name her: only the full sync, which reads them all, judges that
    assert "not judged: company Acme Ltd is status expired; whether another company names them" in " ".join(
        rows["contacts.example.org"].split())
    assert "status inheriting; company Acme Ltd is" in rows["members.example.org"]
    assert len(reads) == 2 and reads[1].endswith("/api/members/acme")  # the person, then their company
