"""A real GNU Mailman 3 core on 127.0.0.1, in its own virtualenv, for the demo and the tests.

    python -m sandbox.mailman up   [--home .mailman] [--port 8001] [--mail] [--core 3.3.8]
    python -m sandbox.mailman down [--home .mailman]

`up` installs Mailman (pinned in sandbox/mailman-requirements.txt, or for the oldest supported
core in sandbox/mailman-3.3.8-requirements.txt; each in a virtualenv of its own, reused when present),
writes its configuration, starts it and waits until its REST API answers. REST-only by
default (~3 s, ~150 MB); `--mail` also runs the runners that deliver mail and an SMTP sink
that stores every message in `<home>/maildir`, so tests can see what Mailman sends.
Facts and traps: reference/mailman-rest.md (SQLAlchemy < 2.1, never pipe `mailman start`,
`--run-as-root`, the gunicorn control socket).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import mailbox
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from urllib.parse import quote

import requests

from tasks.host import process_alive, wait_gone

ROOT = Path(__file__).resolve().parent.parent
CURRENT, OLDEST = "3.3.10", "3.3.8"   # the core the demo runs, and the oldest the tool supports and tests
REQUIREMENTS = {CURRENT: Path(__file__).with_name("mailman-requirements.txt"),
                OLDEST: Path(__file__).with_name(f"mailman-{OLDEST}-requirements.txt")}
VENVS = {CURRENT: ROOT / ".mailman" / "venv", OLDEST: ROOT / ".mailman" / f"venv-{OLDEST}"}  # git-ignored
DEFAULT_HOME = ROOT / ".mailman" / "demo"
ADMIN_USER, ADMIN_PASS = "restadmin", "restpass"
RUNNERS = ["archive", "bounces", "command", "in", "lmtp", "out", "pipeline", "retry", "task", "virgin", "digest"]
MAIL_RUNNERS = {"in", "out", "pipeline", "retry", "virgin"}  # enough to deliver welcome/goodbye mail


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class MailmanCore:
    """One Mailman core: its folder, ports and processes."""

    home: Path = DEFAULT_HOME
    port: int = 8001
    mail: bool = False
    smtp_port: int | None = None
    core: str = CURRENT    # a key of REQUIREMENTS

    @property
    def venv(self) -> Path:
        return VENVS[self.core]

    @property
    def config(self) -> Path:
        return self.home / "mailman.cfg"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def maildir(self) -> Path:
        return self.home / "maildir"

    # install ------------------------------------------------------------------------------
    def install(self) -> None:
        """Create the virtualenv from the pinned requirements, unless it is already there."""
        stamp = self.venv / ".requirements-sha256"
        requirements = REQUIREMENTS[self.core]
        wanted = hashlib.sha256(requirements.read_bytes()).hexdigest()
        self.venv.parent.mkdir(parents=True, exist_ok=True)
        # One install at a time: the test workers (pytest-xdist), the demo and the bench may all
        # ask at once on a fresh clone, and a second `venv --clear` would empty the first's.
        with open(self.venv.parent / f"install-{self.core}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if stamp.exists() and stamp.read_text() == wanted and (self.venv / "bin" / "mailman").exists():
                return
            log = self.venv.parent / f"install-{self.core}.log"
            with open(log, "wb") as sink:
                for step in ([sys.executable, "-m", "venv", "--clear", str(self.venv)],
                             [str(self.venv / "bin" / "pip"), "install", "--disable-pip-version-check", "-r",
                              str(requirements)]):
                    if subprocess.run(step, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink).returncode:
                        raise RuntimeError(f"installing Mailman failed; see {log}")
            stamp.write_text(wanted)

    # configure ----------------------------------------------------------------------------
    def write_config(self) -> None:
        var = self.home / "var"
        var.mkdir(parents=True, exist_ok=True)
        # This file replaces Mailman's own gunicorn.cfg rather than adding to it: its request
        # timeout (360 s) is restated, or gunicorn's 30 s kills a delivery-status search of a
        # 100,000-member list half-way (measured: SIGKILL, the client sees a dropped connection).
        (self.home / "gunicorn.cfg").write_text("[gunicorn]\ncontrol_socket_disable = true\ngraceful_timeout = 30\n"
                                                "timeout = 360\n")
        runners = [f"[runner.{name}]\nstart: no\n" for name in RUNNERS
                   if not (self.mail and name in MAIL_RUNNERS)]
        self.config.write_text("\n".join([
            "[mailman]", "layout: local", "site_owner: postmaster@example.org", "",
            "[paths.local]", f"var_dir: {var}", "",
            "[database]", "class: mailman.database.sqlite.SQLiteDatabase",
            "url: sqlite:///$DATA_DIR/mailman.db", "",
            "[webservice]", "hostname: 127.0.0.1", f"port: {self.port}", f"admin_user: {ADMIN_USER}",
            f"admin_pass: {ADMIN_PASS}", f"configuration: {self.home / 'gunicorn.cfg'}", "",
            "[mta]", "incoming: mailman.mta.null.NullMTA", "smtp_host: 127.0.0.1",
            f"smtp_port: {self.smtp_port or 25}", "lmtp_host: 127.0.0.1", f"lmtp_port: {free_port()}", "",
            *runners,
        ]) + "\n")

    # run ----------------------------------------------------------------------------------
    def _mailman(self, *args: str, log: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        command = [str(self.venv / "bin" / "mailman")]
        if os.geteuid() == 0:
            command.append("--run-as-root")
        command += ["-C", str(self.config), *args]
        # Never a pipe: the daemon inherits it and whoever reads it waits forever.
        with open(log or os.devnull, "ab") as sink:
            return subprocess.run(command, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, timeout=timeout)

    def _pid(self, name: str) -> int | None:
        path = self.home / name
        if path.exists():
            text = path.read_text().strip()
            if text.isdigit() and process_alive(int(text)):
                return int(text)
        return None

    def master_pid(self) -> int | None:
        return self._pid("var/master.pid")

    def running(self) -> bool:
        try:
            return requests.get(f"{self.rest_url}/3.1/system/versions", auth=(ADMIN_USER, ADMIN_PASS),
                                timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def start(self, timeout: float = 90) -> None:
        """Install, configure and start; returns once the REST API answers."""
        if self.master_pid() and self.running():
            return
        self.install()
        self.home.mkdir(parents=True, exist_ok=True)
        if self.mail:
            self.smtp_port = self.smtp_port or free_port()
            self._start_smtp_sink()
        self.write_config()
        # Any `mailman` command upgrades the database to its own version: `down` must use the
        # core that `up` started (see `recorded`).
        (self.home / "core").write_text(self.core)
        self._mailman("start", "--force", log=self.home / "start.log")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.running():
                return
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"Mailman did not answer on {self.rest_url} within {timeout:.0f} s; "
                           f"see {self.home / 'start.log'} and {self.home / 'var/logs'}")

    def _start_smtp_sink(self) -> None:
        for sub in ("tmp", "new", "cur"):
            (self.maildir / sub).mkdir(parents=True, exist_ok=True)
        with open(self.home / "smtp.log", "ab") as log:
            sink = subprocess.Popen(
                [str(self.venv / "bin" / "python"), "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{self.smtp_port}",
                 "-c", "aiosmtpd.handlers.Mailbox", str(self.maildir)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        (self.home / "smtp.pid").write_text(str(sink.pid))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.smtp_port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError("the SMTP sink did not start; see smtp.log")

    def reset(self) -> None:
        """Stop, forget every list, address and user, and start again: a core as new."""
        self.stop()
        shutil.rmtree(self.home / "var", ignore_errors=True)
        self.start()

    def stop(self) -> None:
        """Stop Mailman (and the SMTP sink) by their PIDs, waiting for them to exit."""
        master = self.master_pid()
        if master and self.config.exists():
            self._mailman("stop", log=self.home / "stop.log")
            wait_gone(master, 30)
        for name in ("var/master.pid", "smtp.pid"):
            pid = self._pid(name)
            if pid:
                os.kill(pid, signal.SIGTERM)
                wait_gone(pid, 10)
            (self.home / name).unlink(missing_ok=True)

    # what Mailman sent --------------------------------------------------------------------
    def messages(self) -> list:
        if not self.maildir.exists():
            return []
        return list(mailbox.Maildir(str(self.maildir), create=False))

    def clear_messages(self) -> None:
        if self.maildir.exists():
            box = mailbox.Maildir(str(self.maildir), create=False)
            for key in list(box.keys()):
                box.remove(key)


class MailmanAdmin:
    """The few REST calls that set a core up for demos and tests (domains, lists, members)."""

    def __init__(self, rest_url: str) -> None:
        self.base = f"{rest_url}/3.1"
        self.session = requests.Session()
        self.session.auth = (ADMIN_USER, ADMIN_PASS)

    def _call(self, method: str, path: str, ok: tuple[int, ...], **kwargs) -> requests.Response:
        response = self.session.request(method, f"{self.base}/{path}", timeout=30, **kwargs)
        if response.status_code not in ok:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:200]}")
        return response

    def ensure_domain(self, mail_host: str) -> None:
        self._call("POST", "domains", (201, 400), data={"mail_host": mail_host})

    def recreate_list(self, fqdn: str, **config: str) -> str:
        """A fresh, empty list (deleted first if it exists); returns its dot-form id."""
        list_id = fqdn.replace("@", ".")
        self._call("DELETE", f"lists/{list_id}", (204, 404))
        self.ensure_domain(fqdn.partition("@")[2])
        self._call("POST", "lists", (201,), data={"fqdn_listname": fqdn})
        if config:
            self._call("PATCH", f"lists/{list_id}/config", (204,), data=config)
        return list_id

    def has_list(self, fqdn: str) -> bool:
        return self._call("GET", f"lists/{fqdn.replace('@', '.')}", (200, 404)).status_code == 200

    def delete_list(self, list_id: str) -> None:
        self._call("DELETE", f"lists/{list_id}", (204, 404))

    def add_member(self, list_id: str, email: str, display_name: str = "") -> None:
        self._call("POST", "members", (201,), data={
            "list_id": list_id, "subscriber": email, "display_name": display_name, "pre_verified": "true",
            "pre_confirmed": "true", "pre_approved": "true", "send_welcome_message": "false"})

    def subscribe_account(self, list_id: str, email: str, nickname: str) -> str:
        """A member as Postorius makes one: a user (an account) with the name its owner chose,
        its address verified and preferred, the user subscribed (`subscription_mode: as_user`);
        returns the user's id."""
        user = self._call("POST", "users", (201,), data={"email": email, "display_name": nickname})
        user_id = user.headers["location"].rstrip("/").rpartition("/")[2]
        self._call("POST", f"addresses/{quote(email, safe='')}/verify", (204,))
        self._call("POST", f"users/{user_id}/preferred_address", (201,), data={"email": email})
        self._call("POST", "members", (201,), data={
            "list_id": list_id, "subscriber": user_id, "pre_verified": "true", "pre_confirmed": "true",
            "pre_approved": "true", "send_welcome_message": "false"})
        return user_id

    def roster(self, list_id: str) -> dict[str, str]:
        """Every member's email → display name, read page by page."""
        members, page = {}, 1
        while True:
            body = self._call("GET", f"lists/{list_id}/roster/member", (200,), params=[
                ("count", 1000), ("page", page), ("fields", "email"), ("fields", "display_name")]).json()
            entries = body.get("entries", [])
            members.update({e["email"]: e.get("display_name") or "" for e in entries})
            if not entries or len(members) >= body["total_size"]:
                return members
            page += 1

    def add_role(self, list_id: str, email: str, role: str) -> None:
        """An owner, moderator or nonmember (each role has its own roster)."""
        self._call("POST", "members", (201,), data={"list_id": list_id, "subscriber": email, "role": role,
                                                    "pre_verified": "true", "pre_confirmed": "true",
                                                    "pre_approved": "true", "send_welcome_message": "false"})

    def with_role(self, list_id: str, role: str) -> set[str]:
        body = self._call("GET", f"lists/{list_id}/roster/{role}", (200,), params={"count": 1000, "page": 1}).json()
        return {e["email"] for e in body.get("entries", [])}

    def ask_to_join(self, list_id: str, email: str, *, confirmed: bool = True) -> None:
        """A pending subscription request: for the moderator (`confirmed`), else awaiting the
        person's own confirmation (Mailman mails them for it). The list must be moderated."""
        flags = {"pre_verified": "true", "pre_confirmed": "true"} if confirmed else {}
        self._call("POST", "members", (202,), data={"list_id": list_id, "subscriber": email, **flags})

    def requests(self, list_id: str) -> dict[str, str]:
        """Pending subscription requests: email → whose move it is (moderator or subscriber)."""
        body = self._call("GET", f"lists/{list_id}/requests", (200,), params={"count": 1000, "page": 1}).json()
        return {e["email"]: e["token_owner"] for e in body.get("entries", [])}

    def ban(self, email: str, list_id: str | None = None) -> None:
        """Ban an address (or a `^` pattern) on one list, or everywhere without a list."""
        self._call("POST", "bans" if list_id is None else f"lists/{list_id}/bans", (201,), data={"email": email})

    def unban(self, email: str, list_id: str | None = None) -> None:
        path = "bans" if list_id is None else f"lists/{list_id}/bans"
        self._call("DELETE", f"{path}/{quote(email, safe='')}", (204, 404))

    def _member_id(self, list_id: str, email: str) -> str:
        return self._call("GET", f"lists/{list_id}/member/{quote(email, safe='')}", (200,)).json()["member_id"]

    def set_preferences(self, list_id: str, email: str, *, delivery_mode: str | None = None,
                        moderation_action: str | None = None, delivery_status: str | None = None) -> None:
        """A member's settings as a lived-in list has them: a digest, a moderated poster, a
        delivery stopped by the member (`by_user`) or by bounces (`by_bounces`)."""
        member_id = self._member_id(list_id, email)
        member = {k: v for k, v in (("delivery_mode", delivery_mode), ("moderation_action", moderation_action))
                  if v is not None}
        if member:
            self._call("PATCH", f"members/{member_id}", (204,), data=member)
        if delivery_status is not None:
            self._call("PATCH", f"members/{member_id}/preferences", (204,), data={"delivery_status": delivery_status})

    def settings(self, list_id: str, email: str) -> tuple[str, str, str]:
        """(delivery_mode, moderation_action or '', delivery_status) of one member."""
        member = self._call("GET", f"lists/{list_id}/member/{quote(email, safe='')}", (200,)).json()
        # The member's own preferences leave out what it never set; `all/` resolves them.
        prefs = self._call("GET", f"members/{member['member_id']}/all/preferences", (200,)).json()
        return member["delivery_mode"], member.get("moderation_action", ""), prefs["delivery_status"]

    def remove(self, list_id: str, email: str) -> None:
        """Remove a member without mail (as Mailman does after bounces, or an owner by hand)."""
        self._call("DELETE", f"lists/{list_id}/roster/member", (200,), json={"emails": [email.lower()]})

    def held(self, list_id: str) -> set[str]:
        body = self._call("GET", "members/find", (200,), params={
            "list_id": list_id, "role": "member", "delivery_status": "by_moderator", "count": 1000, "page": 1}).json()
        return {e["email"] for e in body.get("entries", [])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.mailman", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME)
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--mail", action="store_true", help="run the mail runners and an SMTP sink")
    parser.add_argument("--core", choices=sorted(REQUIREMENTS), default=CURRENT, help="which Mailman core")
    args = parser.parse_args(argv)
    home = args.home.resolve()
    recorded = (home / "core").read_text().strip() if (home / "core").exists() else None
    chosen = args.core if args.command == "up" else recorded if recorded in REQUIREMENTS else args.core
    core = MailmanCore(home=home, port=args.port, mail=args.mail, core=chosen)
    if args.command == "up":
        core.start()
        print(f"Mailman core answers on {core.rest_url} (user {ADMIN_USER}, password {ADMIN_PASS})")
    elif args.command == "down":
        core.stop()
        print("Mailman core stopped")
    else:
        print("running" if core.running() else "stopped")
        sys.exit(0 if core.running() else 1)


if __name__ == "__main__":
    main()
