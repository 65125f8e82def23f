"""The local Prefect server the command line finds by itself.

Without `PREFECT_API_URL` (in the environment or the active Prefect profile), every command
used to start a temporary Prefect server of its own: 35-60 s on a loaded 2-core machine, and a
time-out on the first one. Instead the first command starts one persistent server in the
background, under `$NOVI_MAILMAN_HOME` (its database, log and PID), says so in one line, and
every later command uses it. `novi-mailman server start|stop|status` manage it by hand.

Imports nothing of Prefect: it decides, before Prefect is imported, which server Prefect is
to talk to (Prefect reads its settings once, when it is imported).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tasks.errors import SyncError
from tasks.host import process_alive, wait_gone

HOME_ENV = "NOVI_MAILMAN_HOME"
PREFERRED_PORT = 4200      # Prefect's own default, where people look for the UI
START_TIMEOUT_S = 240      # a fresh database on a loaded 2-core machine took 35-45 s; never time out early
PROGRESS_EVERY_S = 15


class ServerError(SyncError):
    """The local Prefect server could not be started or reached."""


def home() -> Path:
    return Path(os.environ.get(HOME_ENV, "~/.novi-mailman")).expanduser()


def _state_file() -> Path:
    return home() / "prefect-server.json"


def _log_file() -> Path:
    return home() / "prefect-server.log"


def configured() -> bool:
    """Whether Prefect is already told which API to use, wherever Prefect itself would read it:
    the environment, settings already loaded in this process (a test harness), the working
    directory's `.env`, `prefect.toml` or `pyproject.toml` ([tool.prefect]), or the active
    Prefect profile."""
    if os.environ.get("PREFECT_API_URL"):
        return True
    if "prefect.settings" in sys.modules:
        from prefect.settings import PREFECT_API_URL

        return bool(PREFECT_API_URL.value())
    return _in_working_directory() or _in_profile()


def _toml(path: str) -> dict:
    try:
        return tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def _in_working_directory() -> bool:
    """Prefect's own sources besides the environment and the profile (prefect/settings/sources.py)."""
    try:
        from dotenv import dotenv_values  # Prefect's dependency, and cheap: not Prefect itself

        if dotenv_values(".env").get("PREFECT_API_URL"):
            return True
    except OSError:
        pass
    prefect_toml = _toml("prefect.toml")
    pyproject = _toml("pyproject.toml").get("tool", {}).get("prefect", {})
    return any(table.get("api", {}).get("url") or table.get("PREFECT_API_URL") for table in (prefect_toml, pyproject))


def _in_profile() -> bool:
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH", Path(os.environ.get("PREFECT_HOME", "~/.prefect"))
                                   .expanduser() / "profiles.toml")).expanduser()
    data = _toml(str(profiles))
    active = os.environ.get("PREFECT_PROFILE") or data.get("active", "")
    return bool(data.get("profiles", {}).get(active, {}).get("PREFECT_API_URL"))


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=3) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _ours(pid: int, url: str) -> bool:
    """Whether `pid` is the Prefect server this home started, not a process that reused its PID
    after a reboot (whose whole group `stop` would otherwise signal)."""
    if not process_alive(pid):
        return False
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc (not Linux): the PID and the health check are all there is
    port = url.rsplit(":", 1)[-1].removesuffix("/api").encode()
    return b"server" in command and b"start" in command and port in command


def status() -> dict | None:
    """The running local server ({"pid", "url"}), or None."""
    try:
        state = json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return None
    if _ours(int(state.get("pid", 0)), state.get("url", "")) and _healthy(state["url"]):
        return state
    return None


def _free_port() -> int:
    for port in (PREFERRED_PORT, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise ServerError("no free port on 127.0.0.1 for a Prefect server")


def start(say: Callable[[str], None]) -> str:
    """The local server's API URL, started in the background if it is not running.

    Two commands at the same instant (a cron job and a person) start one server: the second
    waits on the first's lock, then finds it running."""
    running = status()
    if running:
        return running["url"]
    home().mkdir(parents=True, exist_ok=True)
    with open(home() / "prefect-server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        running = status()
        return running["url"] if running else _start(say)


def _start(say: Callable[[str], None]) -> str:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    prefect = Path(sys.executable).parent / "prefect"
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    # PREFECT_UI_URL: the links in alerts (`{{ flow_run|ui_url }}`) are made by the server.
    env.update(PREFECT_HOME=str(home() / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               PREFECT_UI_URL=f"http://127.0.0.1:{port}")
    say(f"Starting a local Prefect server at http://127.0.0.1:{port} for novi-mailman ({home()}); the first start "
        "takes up to a minute, later commands find it running.")
    started = time.monotonic()
    with open(_log_file(), "ab") as log:
        process = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                   start_new_session=True)
    _state_file().write_text(json.dumps({"pid": process.pid, "url": url}))
    said = started
    while time.monotonic() - started < START_TIMEOUT_S:
        if time.monotonic() - said >= PROGRESS_EVERY_S:  # a loaded machine: show it is not stuck
            said = time.monotonic()
            say(f"… still starting ({said - started:.0f} s; its log: {_log_file()})")
        if _healthy(url):
            say(f"Prefect server ready in {time.monotonic() - started:.0f} s (UI: http://127.0.0.1:{port}; "
                "`novi-mailman server stop` stops it).")
            return url
        if process.poll() is not None:
            break
        time.sleep(0.5)
    stop()
    raise ServerError(f"the local Prefect server did not start (see {_log_file()}); or set PREFECT_API_URL to a "
                      "Prefect server of your own")


def stop() -> bool:
    """Stop the local server; whether one was running."""
    try:
        state = json.loads(_state_file().read_text())
        pid, url = int(state["pid"]), str(state["url"])
    except (OSError, ValueError, KeyError):
        return False
    _state_file().unlink(missing_ok=True)
    if not _ours(pid, url):
        return False
    os.killpg(pid, signal.SIGTERM)
    wait_gone(pid, 30)
    return True


def ensure(say: Callable[[str], None]) -> None:
    """Point Prefect at a server before it is imported: the configured one, else the local one."""
    if not configured():
        os.environ["PREFECT_API_URL"] = start(say)
