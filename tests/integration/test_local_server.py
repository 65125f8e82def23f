"""The first hour on the command line: without PREFECT_API_URL the commands start one local
Prefect server in the background, say so in one line, and find it afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests


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
        # The server holds the secrets: it answers its own commands only (issue 27, item 8).
        auth = Path(env["NOVI_MAILMAN_HOME"]) / "prefect-server.auth"
        assert auth.stat().st_mode & 0o777 == 0o600
        url = json.loads((Path(env["NOVI_MAILMAN_HOME"]) / "prefect-server.json").read_text())["url"]
        anyone = requests.post(f"{url}/block_documents/filter", json={"include_secrets": True}, timeout=30)
        assert anyone.status_code == 401
        owner = requests.post(f"{url}/block_documents/filter", json={"include_secrets": True}, timeout=30,
                              auth=tuple(auth.read_text().strip().split(":", 1)))
        assert owner.status_code == 200
        # A ledger block is read from this server, not from a temporary one (issue 27, item 12)
        looked = novi_mailman(env, "history", "x@example.org", "--ledger-block", "nosuch")
        assert looked.returncode == 1 and f"on the Prefect server at {url}" in looked.stderr + looked.stdout
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


def test_a_server_that_took_the_port_is_never_taken_for_ours(tmp_path, monkeypatch):
    """Issue 27, item 7: a process that bound the chosen port during the start-up answered the
    health check; the command said "ready" and sent it the Novi key and the Mailman password."""
    from tasks import local_server

    heard: list[tuple[str, str | None]] = []

    class Impostor(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            heard.append((self.path, self.headers.get("Authorization")))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"true")

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    impostor = ThreadingHTTPServer(("127.0.0.1", 0), Impostor)
    threading.Thread(target=impostor.serve_forever, daemon=True).start()
    monkeypatch.setenv("NOVI_MAILMAN_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(local_server, "_free_port", lambda: impostor.server_address[1])  # taken meanwhile
    said: list[str] = []
    try:
        with pytest.raises(local_server.ServerError, match="did not start"):
            local_server.start(said.append)
    finally:
        impostor.shutdown()
        impostor.server_close()
    assert not any("ready" in line for line in said)
    assert all(authorization is None for _, authorization in heard)  # it was never sent the login
    assert local_server.status() is None and not (tmp_path / "home" / "prefect-server.json").exists()


def test_a_stale_state_file_never_makes_stop_signal_another_process(tmp_path, monkeypatch):
    """Issue 27, item 12: after a reboot the file's PID can be another program's, even one whose
    command line reads like a server's: `server stop` signalled its whole process group."""
    from tasks import local_server

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "server", "start", "--port", "4277"],
                             start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        monkeypatch.setenv("NOVI_MAILMAN_HOME", str(tmp_path))
        (tmp_path / "prefect-server.json").write_text(json.dumps(
            {"pid": other.pid, "url": "http://127.0.0.1:4277/api", "auth": True}))
        assert local_server.status() is None
        assert local_server.stop() is False
        assert other.poll() is None  # alive: not signalled
    finally:
        other.kill()
        other.wait()


def test_a_prefect_api_that_drops_the_connection_is_one_line(tmp_path):
    """Issue 27, item 12: `blocks` against it printed an 80-line traceback."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]

    def drop():
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            connection.close()

    threading.Thread(target=drop, daemon=True).start()
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=f"http://127.0.0.1:{port}/api", NOVI_MAILMAN_HOME=str(tmp_path),
               NOVI_API_KEY="k" * 20, MAILMAN_PASSWORD="p" * 12, PREFECT_CLIENT_MAX_RETRIES="0")
    try:
        answer = novi_mailman(env, "blocks", "--novi-url", "https://novi.example.org",
                              "--mailman-url", "http://127.0.0.1:9/3.1")
    finally:
        listener.close()
    said = (answer.stdout + answer.stderr).strip().splitlines()
    assert answer.returncode == 1 and "Traceback" not in answer.stderr
    assert len(said) <= 2 and f"the Prefect API at http://127.0.0.1:{port}/api did not answer properly" in said[-1]


def test_the_ui_finds_its_own_api_on_whatever_port_the_server_got(tmp_path, monkeypatch):
    """Issue 29, item 2: with 4200 taken and a Prefect profile naming a server there (what
    `prefect config set` leaves), the server started on another port told the browser its API
    was on 4200: every page said "Can't connect to Server API", or showed the other one's runs."""
    import socket

    from sandbox.browser import Browser
    from sandbox.mailman import free_port
    from tasks import local_server

    taken = socket.socket()
    # SO_REUSEADDR: a server this suite stopped a moment ago may leave 4200 in TIME_WAIT, which
    # would fail a plain bind while the port is free to the server; only a listener holds it.
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        taken.bind(("127.0.0.1", local_server.PREFERRED_PORT))
        taken.listen()
    except OSError:  # a listener has it already: as good
        pass
    (tmp_path / "profiles.toml").write_text(
        f'active = "default"\n[profiles.default]\nPREFECT_API_URL = "http://127.0.0.1:{local_server.PREFERRED_PORT}/api"\n')
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(tmp_path / "profiles.toml"))
    monkeypatch.setenv("NOVI_MAILMAN_HOME", str(tmp_path / "home"))
    try:
        url = local_server.start(lambda line: None)
        ui = url.removesuffix("/api")
        assert not ui.endswith(f":{local_server.PREFERRED_PORT}")
        assert requests.get(f"{ui}/ui-settings", timeout=30).json()["api_url"] == url
        with Browser(free_port()) as browser:
            browser.sign_in(ui, local_server.auth_string())
            browser.open(f"{ui}/runs", wait_for="Run a task or flow to get started", seconds=90)
            assert "Can't connect" not in browser.evaluate("document.body.innerText")
    finally:
        local_server.stop()
        taken.close()


def test_a_port_left_in_time_wait_is_free_for_the_server(monkeypatch):
    """Issue 29, item 2: after `make down; make ui` port 4200 lingers in TIME_WAIT; the probe,
    binding without SO_REUSEADDR, took it for busy and the UI moved to a random port."""
    import socket

    from tasks import local_server

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server's side closes first: its port waits in TIME_WAIT
    listener.close()
    client.close()
    with socket.socket() as naive:  # what the probe did: the port looked busy
        with pytest.raises(OSError):
            naive.bind(("127.0.0.1", port))
    monkeypatch.setattr(local_server, "PREFERRED_PORT", port)
    assert local_server._free_port() == port
