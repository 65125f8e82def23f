"""The local Prefect server the command line finds by itself.

Without `PREFECT_API_URL` (in the environment or the active Prefect profile), every command
used to start a temporary Prefect server of its own: 35-60 s on a loaded 2-core machine, and a
time-out on the first one. Instead the first command starts one persistent server in the
background, under `$NOVI_MAILMAN_HOME` (its database, log and PID), says so in one line, and
every later command uses it. `novi-mailman server start|stop|status` manage it by hand.

Imports nothing of Prefect: it decides, before Prefect is imported, which server Prefect is
to talk to (Prefect reads its settings once, when it is imported).

The server holds the credentials blocks (the Novi key, the Mailman password), so it trusts
and is trusted by its own alone: it asks every API call for an auth string kept in a 0600 file
in the home (`client_settings`; the UI asks for it once, at its login page), and a server is
taken for ready only when the very process started here listens on its port: another one that
took the port meanwhile is never sent a secret.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
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


def auth_file() -> Path:
    return home() / "prefect-server.auth"


def auth_string() -> str:
    """The local server's auth string (`novi-mailman:<random>`), made once per home, readable by
    its owner alone."""
    path = auth_file()
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    home().mkdir(parents=True, exist_ok=True)
    # Written whole under another name, then linked into place: a command reading it at the same
    # moment finds either no file or the whole string, never an empty one.
    draft = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(f"novi-mailman:{secrets.token_urlsafe(24)}\n")
    try:
        os.link(draft, path)
    except FileExistsError:  # another command made it a moment ago: theirs is the one
        pass
    finally:
        draft.unlink(missing_ok=True)
    return path.read_text().strip()


def client_settings(url: str) -> dict[str, str]:
    """The environment that points a Prefect client, a worker or a flow run at the local server."""
    return {"PREFECT_API_URL": url, "PREFECT_API_AUTH_STRING": auth_string()}


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


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[-1].removesuffix("/api").split("/")[0])


def _listening_inodes(port: int) -> set[str] | None:
    """The socket inodes listening on a TCP port of this machine (Linux's /proc), or None."""
    found: set[str] = set()
    try:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as rows:
                next(rows)
                for row in rows:
                    fields = row.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                        found.add(fields[9])
    except OSError:
        return None
    return found


def owns_port(pid: int, port: int) -> bool:
    """Whether process `pid` itself listens on `port`: with /proc, its sockets are matched; else
    `lsof` is asked (macOS); where neither can tell, no (fail closed: set PREFECT_API_URL)."""
    inodes = _listening_inodes(port)
    if inodes is not None:
        try:
            return any(os.readlink(f"/proc/{pid}/fd/{fd}") in {f"socket:[{i}]" for i in inodes}
                       for fd in os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            return False
    lsof = shutil.which("lsof")
    if lsof is None:
        return False
    answer = subprocess.run([lsof, "-nP", "-a", "-p", str(pid), f"-iTCP:{port}", "-sTCP:LISTEN", "-t"],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=10)
    return str(pid) in answer.stdout.split()


def _started_at(pid: int) -> str | None:
    """When a process started (Linux: its start time in clock ticks since boot), or None: with the
    PID, what tells the server this home started from a process that reused its PID later."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _ours(state: dict) -> bool:
    """Whether the state file's process is the Prefect server this home started and still
    serving on its port: alive, the leader of the process group started for it (what `stop`
    signals), started when it was, and listening on the port itself. A stale file (a reboot, a
    PID reused by another program) is never taken for it."""
    try:
        pid, port = int(state["pid"]), _port(str(state["url"]))
    except (KeyError, TypeError, ValueError):
        return False
    if not process_alive(pid):
        return False
    try:
        if os.getpgid(pid) != pid:
            return False
    except OSError:
        return False
    started = _started_at(pid)
    if started is not None and state.get("started_at") not in (None, started):
        return False
    return owns_port(pid, port)


def status() -> dict | None:
    """The running local server ({"pid", "url"}), or None. One started by a release before the
    auth string (it answers anyone) is not taken for it: `start` replaces it."""
    state = _state()
    if state and state.get("auth") and _ours(state) and _healthy(state["url"]):
        return state
    return None


def _wait_healthy(url: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _healthy(url):
            return True
        time.sleep(1)
    return False


def _state() -> dict | None:
    try:
        state = json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _free_port() -> int:
    for port in (PREFERRED_PORT, 0):
        with socket.socket() as probe:
            # As the server binds (uvicorn sets it): a port left in TIME_WAIT by a server just
            # stopped is free to it, and 4200 stays where people look for the UI.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
    state = _state()
    if state and _ours(state):
        if state.get("auth"):  # ours, and listening: busy (a loaded machine), not gone
            if _wait_healthy(state["url"], 60):
                return state["url"]
        else:  # started by a release before the auth string: it answers anyone
            stop()
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    prefect = Path(sys.executable).parent / "prefect"
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_AUTH_STRING"}
    # The server tells the browser where its API is (PREFECT_UI_API_URL, by default its own
    # PREFECT_API_URL, which a profile, .env or prefect.toml may point at another server: the
    # UI then said "Can't connect" or showed that server's runs), and makes the alerts' links
    # from PREFECT_UI_URL: all three name this server, whatever port it got.
    env.update(PREFECT_HOME=str(home() / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               PREFECT_API_URL=url, PREFECT_UI_API_URL=url, PREFECT_UI_URL=f"http://127.0.0.1:{port}",
               PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(port),
               PREFECT_SERVER_API_AUTH_STRING=auth_string())
    say(f"Starting a local Prefect server at http://127.0.0.1:{port} for novi-mailman ({home()}); the first start "
        "takes up to a minute, later commands find it running.")
    started = time.monotonic()
    with open(_log_file(), "ab") as log:
        process = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                   start_new_session=True)
    state = {"pid": process.pid, "url": url, "auth": True, "started_at": _started_at(process.pid)}
    _state_file().write_text(json.dumps(state))
    said = started
    while time.monotonic() - started < START_TIMEOUT_S:
        if process.poll() is not None:  # it died (the port taken under it, a bad database…)
            break
        if time.monotonic() - said >= PROGRESS_EVERY_S:  # a loaded machine: show it is not stuck
            said = time.monotonic()
            say(f"… still starting ({said - started:.0f} s; its log: {_log_file()})")
        # Only our child listening on the port is our server: whoever else answers there is not sent a thing.
        if owns_port(process.pid, port) and _healthy(url):
            say(f"Prefect server ready in {time.monotonic() - started:.0f} s (UI: http://127.0.0.1:{port}, "
                f"its login: the string in {auth_file()}; `novi-mailman server stop` stops it).")
            return url
        time.sleep(0.5)
    if process.poll() is None:  # ours, whether or not it ever listened
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    _state_file().unlink(missing_ok=True)
    raise ServerError(f"the local Prefect server did not start (see {_log_file()}); or set PREFECT_API_URL to a "
                      "Prefect server of your own")


def stop() -> bool:
    """Stop the local server; whether one was running."""
    state = _state()
    if state is None:
        return False
    _state_file().unlink(missing_ok=True)
    if not _ours(state):
        return False
    pid = int(state["pid"])
    os.killpg(pid, signal.SIGTERM)
    wait_gone(pid, 30)
    return True


def ensure(say: Callable[[str], None]) -> None:
    """Point Prefect at a server before it is imported: the configured one, else the local one."""
    if not configured():
        os.environ.update(client_settings(start(say)))
        return
    running = status()  # pointed at the local server by hand (`export $(make -s demo-env)`): its login too
    given = os.environ.get("PREFECT_API_URL", "").rstrip("/").replace("://localhost:", "://127.0.0.1:")
    if running and given == running["url"]:
        os.environ.setdefault("PREFECT_API_AUTH_STRING", auth_string())
