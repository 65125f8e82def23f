"""The first hour on the command line: without PREFECT_API_URL the commands start one local
Prefect server in the background, say so in one line, and find it afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

COMMAND = [str(Path(sys.executable).parent / "novi-mailman")]


def novi_mailman(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*COMMAND, *args], env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def test_commands_find_or_start_one_local_prefect_server(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(NOVI_MAILMAN_HOME=str(tmp_path / "home"), PREFECT_PROFILES_PATH=str(tmp_path / "profiles.toml"))
    assert novi_mailman(env, "server", "status").returncode == 1
    try:
        first = novi_mailman(env, "check")  # no blocks saved yet: each side says so, on its own line
        output = first.stdout + first.stderr
        assert first.returncode == 1
        assert output.count("Starting a local Prefect server") == 1 and "Prefect server ready in" in output
        novi_line, mailman_line = [line for line in first.stderr.splitlines() if line.startswith(("Novi:", "Mailman:"))]
        assert "no NoviCredentials block named 'novi' on the Prefect server at http://127.0.0.1:" in novi_line
        assert "novi-mailman blocks" in mailman_line
        assert "Traceback" not in output and "ERROR" not in output and "telemetry" not in output

        again = novi_mailman(env, "check")
        assert again.returncode == 1 and "Starting" not in again.stderr  # found running
        status = novi_mailman(env, "server", "status")
        assert status.returncode == 0 and "Local Prefect server: http://127.0.0.1:" in status.stdout
    finally:
        stopped = novi_mailman(env, "server", "stop")
    assert "stopped" in stopped.stdout and novi_mailman(env, "server", "status").returncode == 1


def test_two_commands_at_once_start_one_server(tmp_path):
    """A cron job and a person at the same instant: the second waits for the first's server."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(NOVI_MAILMAN_HOME=str(tmp_path / "home"), PREFECT_PROFILES_PATH=str(tmp_path / "profiles.toml"))
    both = [subprocess.Popen([*COMMAND, "server", "start"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, stdin=subprocess.DEVNULL) for _ in range(2)]
    try:
        answers = [process.communicate(timeout=300) for process in both]
        assert [process.returncode for process in both] == [0, 0], answers
        said = "".join(out + err for out, err in answers)
        assert said.count("Starting a local Prefect server") == 1, said
        (url,) = {out.strip() for out, _ in answers}
        assert url.startswith("Prefect server: http://127.0.0.1:")
    finally:
        novi_mailman(env, "server", "stop")
    assert novi_mailman(env, "server", "status").returncode == 1


@pytest.mark.parametrize(("name", "text"), [
    (".env", "PREFECT_API_URL=http://127.0.0.1:4999/api\n"),
    ("prefect.toml", '[api]\nurl = "http://127.0.0.1:4999/api"\n'),
    ("pyproject.toml", '[tool.prefect.api]\nurl = "http://127.0.0.1:4999/api"\n'),
    ("unrelated.toml", '[api]\nurl = "http://127.0.0.1:4999/api"\n'),
])
def test_a_prefect_api_url_where_prefect_reads_it_is_used_not_a_local_server(tmp_path, name, text):
    """Prefect reads the working directory's .env, prefect.toml and pyproject.toml: a server
    named there is the user's, and no local one is started beside it."""
    (tmp_path / name).write_text(text)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(PREFECT_PROFILES_PATH=str(tmp_path / "profiles.toml"))
    probe = "from tasks.local_server import configured\nprint(configured())"
    done = subprocess.run([sys.executable, "-c", probe], env={**env, "PYTHONPATH": str(Path(__file__).parents[2])},
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == str(name != "unrelated.toml"), done.stderr
