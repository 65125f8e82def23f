"""The first hour, as a newcomer meets it: the installed `novi-mailman`, each command a process
of its own with its output piped (cron mail, CI logs, `| tee`), against the Novi sandbox, a real
Mailman core and a real Prefect server. Every expected failure is one line; no table cell is
cut; nothing of Prefect's internals or telemetry reaches the output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sandbox.mailman import free_port
from tests.integration.helpers import lists_for


COMMAND = str(Path(sys.executable).parent / "novi-mailman")
# What Prefect's internals print when they talk to the user: tracebacks, their own ERROR lines,
# the telemetry heartbeat, the services' shutdown chatter.
NOISE = ("Traceback", "ERROR", "telemetry", "heartbeat", "EventsWorker", "APILogWorker", "Still processing")
HEADERS = ("list", "eligible", "on roster", "in step", "subscribe", "unsubscribe", "hold", "release", "rename",
           "failed")


@pytest.fixture
def env(real_blocks, tmp_path) -> dict[str, str]:
    """A user's shell: the session's Prefect server, no COLUMNS, no Prefect settings of the tests."""
    from prefect.settings import PREFECT_API_URL

    shell = {key: value for key, value in os.environ.items()
             if not key.startswith(("PREFECT_", "NOVI_MAILMAN_")) and key not in ("COLUMNS", "DO_NOT_TRACK")}
    shell.update(PREFECT_API_URL=PREFECT_API_URL.value(), NOVI_MAILMAN_HOME=str(tmp_path / "home"),
                 NOVI_MAILMAN_LEDGER=str(tmp_path / "ledger.sqlite"), NOVI_MAILMAN_REPORTS=str(tmp_path / "reports"))
    return shell


def novi_mailman(env: dict, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([COMMAND, *args], env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    shown = done.stdout + done.stderr
    assert not [word for word in NOISE if word in shown], shown
    return done


def one_line(done: subprocess.CompletedProcess) -> str:
    """The command's only line of output, on stderr (a failure writes nothing to stdout)."""
    assert done.returncode != 0
    assert done.stdout == "", done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


BLOCKS = ("--novi-block", "it-novi", "--mailman-block", "it-mailman")


def test_a_plan_to_a_pipe_prints_every_cell_whole(world, env, tmp_path):
    """Tables were cut to 80 columns when stdout was not a terminal: "ban.…", "elig…"."""
    (list_id,) = lists_for(world, "a-rather-long-list-name-for-the-committee-of-regional-chapters")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"lists": [{"list_id": list_id}]}))
    done = novi_mailman(env, "plan", "--rules", str(rules), *BLOCKS)
    assert done.returncode == 0, done.stderr
    table = done.stdout
    assert "…" not in table and list_id in table
    header = next(line for line in table.splitlines() if "eligible" in line)
    assert all(f" {name} " in header for name in HEADERS), header
    assert f"Full plan: {tmp_path / 'reports'}" in table


def test_check_to_a_pipe_says_each_side_on_its_own_line(world, env):
    done = novi_mailman(env, "check", *BLOCKS)
    assert done.returncode == 0, done.stderr
    novi, mailman = done.stdout.splitlines()[:2]
    assert novi.startswith("Novi: connected, ") and " member records" in novi
    assert mailman.startswith("Mailman GNU Mailman 3.3") and ": connected, " in mailman


@pytest.mark.parametrize(("args", "says"), [
    (["plan", "--workers", "99", "--list", "a@example.org"], "Invalid value for '--workers'"),
    (["sync", "--batch-size", "0", "--list", "a@example.org"], "Invalid value for '--batch-size'"),
    (["plan", "--no-such-option"], "No such option: --no-such-option"),
    (["sync", "--approve", "not-a-plan", "--list", "a@example.org"], "approve must be a plan's fingerprint"),
    (["sync", "--approve", "0123456789ab", "--override-guards", "--list", "a@example.org"], "not both"),
    (["plan", "--rules", "no-such-rules.yaml"], "rules file no-such-rules.yaml does not exist"),
    (["plan", "--rules", "r.yaml", "--list", "a@example.org"], "either a rules file or a single list id"),
    (["history"], "Missing argument 'ADDRESS'"),
    (["frobnicate"], "No such command 'frobnicate'"),
], ids=["workers", "batch-size", "unknown-option", "approve", "approve-and-override", "rules-missing",
        "rules-and-list", "missing-argument", "unknown-command"])
def test_a_mistake_in_the_command_is_one_line_before_anything_starts(env, tmp_path, args, says):
    """Checked before Prefect is reached: the API URL points nowhere, and no local server starts."""
    env = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"}
    line = one_line(novi_mailman(env, *args))
    assert says.lower() in line.lower(), line
    assert not (tmp_path / "home").exists()  # no local server was started for a typo


def test_a_block_that_is_not_saved_is_one_line_naming_the_server_and_the_fix(env):
    from prefect.settings import PREFECT_API_URL

    line = one_line(novi_mailman(env, "plan", "--list", "a@example.org", "--novi-block", "no-such-novi"))
    assert f"no NoviCredentials block named 'no-such-novi' on the Prefect server at {PREFECT_API_URL.value()}" in line
    assert "novi-mailman blocks" in line


def test_a_prefect_server_that_does_not_answer_is_one_line(env):
    url = f"http://127.0.0.1:{free_port()}/api"
    line = one_line(novi_mailman({**env, "PREFECT_API_URL": url}, "plan", "--list", "a@example.org"))
    assert f"the Prefect server at {url} does not answer" in line and "novi-mailman server start" in line


def test_check_with_a_mailman_that_refuses_connections_says_so_on_its_line(world, env):
    from tasks.blocks import MailmanCredentials

    MailmanCredentials(rest_url=f"http://127.0.0.1:{free_port()}", password="x").save("ux-mailman-down",
                                                                                      overwrite=True)
    done = novi_mailman(env, "check", "--novi-block", "it-novi", "--mailman-block", "ux-mailman-down")
    assert done.returncode == 1
    assert done.stdout.startswith("Novi: connected, ")
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("Mailman: ") and "could not connect" in line


def test_prefect_telemetry_is_off_unless_the_user_turns_it_on(env):
    """Prefect's SDK sends usage events unless DO_NOT_TRACK is set (or CI is detected: the probe
    clears every variable Prefect takes for CI, so the answer is the command line's own)."""
    from prefect._internal.analytics.ci_detection import CI_ENV_VARS

    shell = {key: value for key, value in env.items() if key not in CI_ENV_VARS}
    probe = ("import flows.cli, os\nfrom prefect._internal.analytics import is_telemetry_enabled\n"
             "print(is_telemetry_enabled(), os.environ['PREFECT_SERVER_ANALYTICS_ENABLED'])")
    quiet = subprocess.run([sys.executable, "-c", probe], env=shell, capture_output=True, text=True, timeout=120)
    assert quiet.stdout.split() == ["False", "false"], quiet.stderr
    chosen = subprocess.run([sys.executable, "-c", probe], env={**shell, "DO_NOT_TRACK": "0",
                                                                 "PREFECT_SERVER_ANALYTICS_ENABLED": "true"},
                            capture_output=True, text=True, timeout=120)
    assert chosen.stdout.split() == ["True", "true"], chosen.stderr


def test_json_output_stays_one_object_when_the_command_fails_before_a_run(env):
    import json

    from tasks.core.schema import RunState

    done = novi_mailman(env, "plan", "--rules", "no-such-rules.yaml", "--json")
    assert done.returncode == 1
    answer = json.loads(done.stdout)
    assert answer["state"] == RunState.FAILED and "does not exist" in answer["message"]


def test_a_run_whose_novi_read_fails_prints_no_traceback_and_ends_with_its_one_line(world, env, novi_sandbox):
    """A read task's failure was printed by Prefect with its whole traceback (Prefect sets its
    logging up after the command quietened it); its ERROR lines about the run stay."""
    from tasks.blocks import NoviCredentials
    from tests.integration.conftest import SANDBOX_KEY

    NoviCredentials(site_url=novi_sandbox.url, api_key=SANDBOX_KEY, read_retries=0).save(
        "it-novi-no-retry", overwrite=True)
    (members,) = lists_for(world, "cli-fails")
    world["novi"].call("POST", "/_sandbox/faults", json={"fail_offsets": [0]})
    try:
        done = subprocess.run([COMMAND, "plan", "--list", members, "--novi-block", "it-novi-no-retry",
                               "--mailman-block", world["mailman_block"]], env=env, capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)
    finally:
        world["novi"].call("DELETE", "/_sandbox/faults")
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("Novi: GET /api/members answered 500"), done.stdout
