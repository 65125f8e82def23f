"""`make demo`, `make ui` and `make down`: the main job against the local sandbox.

Starts (or reuses) a Prefect server, the Novi sandbox and a real Mailman core, all on
127.0.0.1 with their PIDs and logs in .demo/; the Prefect server is the command line's own
local server (tasks/local_server.py) with .demo/ as its home, so `make demo`, `make ui` and a
user's own commands with NOVI_MAILMAN_HOME=.demo meet on one server; then runs the command line a user would:
save the blocks, check, plan (dry run), sync, make churn in the sandbox, sync again, and look
up one address's history. A second `make demo` starts again from the same data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import requests

from sandbox import deploy as deployments
from tasks import local_server
from sandbox import servers
from sandbox.mailman import ADMIN_PASS, ADMIN_USER, MailmanAdmin, MailmanCore
from sandbox.novi import DEFAULT_KEY

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".demo"
BIN = Path(sys.executable).parent
NOVI_PORT, MAILMAN_PORT, WORKER_PORT = 8765, 8001, 4201
NOVI_URL = f"http://127.0.0.1:{NOVI_PORT}"
RULES = ROOT / "sandbox" / "demo-rules.yaml"
MEMBERS = 300
LISTS = ["members@example.org", "board@example.org", "finance@example.org", "north@example.org"]  # demo-rules.yaml's
HAND_ADDED = {"office@example.org": "Association Office", "partner@example.net": "Partner Contact"}


def prefect_ui(start: bool = True) -> str | None:
    """The demo's Prefect server (the command line's local server, its home .demo/): its UI's
    URL, started in the background if `start` and it is not running."""
    os.environ[local_server.HOME_ENV] = str(STATE)
    if start:
        STATE.mkdir(exist_ok=True)
        return local_server.start(print).removesuffix("/api")
    running = local_server.status()
    return running["url"].removesuffix("/api") if running else None


def environment() -> dict[str, str]:
    """What every demo command runs with: the demo's Prefect server and home, ledger and reports."""
    ui = prefect_ui(start=False)
    return {**os.environ, local_server.HOME_ENV: str(STATE), "PREFECT_HOME": str(STATE / "prefect"),
            **(local_server.client_settings(f"{ui}/api") if ui else {}),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
            "NOVI_MAILMAN_LEDGER": str(STATE / "ledger.sqlite"),
            "NOVI_MAILMAN_REPORTS": str(STATE / "reports"),
            "NOVI_API_KEY": DEFAULT_KEY, "MAILMAN_PASSWORD": ADMIN_PASS}


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def _records() -> list[dict]:
    page = requests.get(f"{NOVI_URL}/api/members", params={"pageSize": 1000, "offset": 0},
                        headers={"Authorization": f"Basic {DEFAULT_KEY}"}, timeout=10)
    page.raise_for_status()
    return page.json()["Results"]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    print(f"\n$ novi-mailman {' '.join(args)}", flush=True)
    result = subprocess.run([str(BIN / "novi-mailman"), *args], env=environment(), cwd=ROOT,
                            stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise SystemExit(f"novi-mailman {args[0]} exited with {result.returncode}")
    return result


def up() -> MailmanCore:
    STATE.mkdir(exist_ok=True)
    say("Starting a Prefect server, the Novi sandbox and a real Mailman core on 127.0.0.1")
    prefect_ui()
    servers.start("novi-sandbox", [sys.executable, "-m", "sandbox.novi", "--port", str(NOVI_PORT), "--size", str(MEMBERS)],
                  f"{NOVI_URL}/_sandbox/state", STATE, environment(),
                  headers={"Authorization": f"Basic {DEFAULT_KEY}"})
    core = MailmanCore(port=MAILMAN_PORT)
    core.start()
    print(f"mailman: answering on {core.rest_url} (home .mailman/demo)")
    return core


def demo() -> None:
    core = up()
    say("Fresh data: the sandbox reset to its seed, a Mailman core with two empty lists, an empty ledger")
    core.reset()  # lists and addresses alike: Mailman keeps an address's name across lists
    requests.post(f"{NOVI_URL}/_sandbox/reset", json={"size": MEMBERS, "seed": 1},
                  headers={"Authorization": f"Basic {DEFAULT_KEY}"}, timeout=10).raise_for_status()
    admin = MailmanAdmin(core.rest_url)
    members_list, *_ = [admin.recreate_list(address) for address in LISTS]
    for email, name in HAND_ADDED.items():  # people added by hand, unknown to Novi: they stay
        admin.add_member(members_list, email, name)
    print(f"members@example.org has {len(HAND_ADDED)} addresses added by hand; {', '.join(LISTS[1:])} are empty")
    (STATE / "ledger.sqlite").unlink(missing_ok=True)
    shutil.rmtree(STATE / "reports", ignore_errors=True)

    say("Save the credentials as Prefect blocks, then check both connections")
    run("blocks", "--novi-url", NOVI_URL, "--mailman-url", core.rest_url, "--mailman-user", ADMIN_USER)
    run("check", "--rules", str(RULES.relative_to(ROOT)))

    say("Dry run: what would change (nothing is written)")
    run("plan", "--rules", str(RULES.relative_to(ROOT)))
    say("Sync for real")
    run("sync", "--rules", str(RULES.relative_to(ROOT)))

    say("Churn in Novi: lapses, renewals, renames, address changes, opt-outs, joins, a removal, a committee "
        "term that ends and members who move to another chapter")
    churn = requests.post(f"{NOVI_URL}/_sandbox/churn", json={"lapse": 6, "renew": 4, "rename": 3,
                                                              "change_address": 2, "opt_out": 2, "add": 3,
                                                              "remove": 1, "change_chapter": 2},
                          headers={"Authorization": f"Basic {DEFAULT_KEY}"}, timeout=10)
    churn.raise_for_status()
    changed = churn.json()
    board = next(r for r in _records() if r["Groups"] and r["MemberStatus"] == "current" and r["Active"]
                 and any(g["GroupName"] == "Board of Directors" for g in r["Groups"]))
    requests.patch(f"{NOVI_URL}/_sandbox/members/{board['UniqueID']}", json={"MemberStatus": "expired"},
                   headers={"Authorization": f"Basic {DEFAULT_KEY}"}, timeout=10).raise_for_status()
    # A Finance Committee seat whose term ended yesterday: the committee list lets them go.
    seated = next(r for r in _records() if r["Active"] and any(
        s["CommitteeName"] == "Finance Committee" and not s["EndDate"] for s in r["Committees"] or []))
    seats = [{**s, "EndDate": "2026-12-01T23:59:59-05:00"} if s["CommitteeName"] == "Finance Committee" else s
             for s in seated["Committees"]]
    requests.patch(f"{NOVI_URL}/_sandbox/members/{seated['UniqueID']}", json={"Committees": seats},
                   headers={"Authorization": f"Basic {DEFAULT_KEY}"}, timeout=10).raise_for_status()
    print(", ".join(f"{kind.replace('_', ' ')}: {len(ids)}" for kind, ids in changed.items() if ids)
          + f"; board member {board['Name']} lapsed (the board list holds them); "
          f"{seated['Name']}'s Finance Committee term ended")
    say("Sync again: exactly the churn is applied")
    run("sync", "--rules", str(RULES.relative_to(ROOT)))
    say("Sync once more: nothing left to do, nothing written")
    run("sync", "--rules", str(RULES.relative_to(ROOT)))

    if changed["change_address"]:
        moved = changed["change_address"][0]
        say(f"History of an address that changed in Novi ({moved['old']} → {moved['new']})")
        run("history", moved["old"])

    say("Where to look next")
    print(f"""Prefect UI:     {prefect_ui(start=False)}  (Runs → a sync-lists run → Artifacts: the summary and one plan
                table per list, failures and removals first; or the Artifacts page, keys
                novi-mailman-summary / novi-mailman-plan-members-example-org)
Deployments:    make deploy  (prefect.yaml's deployments and a worker: run, approve and read them in the UI)
Plan CSVs:      .demo/reports/
Ledger:         .demo/ledger.sqlite   (novi-mailman history ADDRESS)
UI login:       the line in .demo/prefect-server.auth (the server answers nobody else)
Novi sandbox:   {NOVI_URL}  (key {DEFAULT_KEY})
Mailman REST:   {core.rest_url}/3.1  ({ADMIN_USER} / {ADMIN_PASS})
Try it yourself: source .venv/bin/activate; export $(make -s demo-env); novi-mailman plan --rules {RULES.relative_to(ROOT)}
                (`prefect …` commands also need: export PREFECT_API_AUTH_STRING=$(cat .demo/prefect-server.auth))
Stop everything: make down""")


def deploy() -> None:
    """The demo's deployments on its Prefect server, with a worker: the UI path in one command."""
    core = up()
    say("Save the credentials as Prefect blocks")
    run("blocks", "--novi-url", NOVI_URL, "--mailman-url", core.rest_url, "--mailman-user", ADMIN_USER)
    admin = MailmanAdmin(core.rest_url)
    for list_id in LISTS:
        if not admin.has_list(list_id):
            admin.recreate_list(list_id)
    say("Deploy prefect.yaml's deployments with the demo's rules, and start a worker for their pool")
    prefect_file = deployments.deployment_file(STATE / "prefect.yaml", {"rules_path": str(RULES.relative_to(ROOT))})
    deployments.deploy(prefect_file, environment())
    deployments.start_worker(STATE, environment(), WORKER_PORT)
    print(f"""Deployed sync-lists/nightly-full-sync, sync-member/webhook-member-sync, address-history/on-demand,
list-history/on-demand and undo-run/on-demand
(pool {deployments.POOL});
the worker runs them with the demo's ledger (.demo/ledger.sqlite) and reports (.demo/reports/).
Prefect UI: {prefect_ui(start=False)}/deployments  (Run → Quick run, or Custom run for the form;
its login: the line in .demo/prefect-server.auth)
Stop everything: make down""")


def down() -> None:
    say("Stopping the demo's servers")
    servers.stop("worker", STATE)
    MailmanCore(port=MAILMAN_PORT).stop()
    print("mailman: stopped")
    servers.stop("novi-sandbox", STATE)
    prefect_ui(start=False)  # the demo's home
    print("prefect: stopped" if local_server.stop() else "prefect: was not running")


def ui() -> None:
    print(f"Prefect UI: {prefect_ui()}  (its login: the line in .demo/prefect-server.auth; make down stops it)")


def env() -> None:
    """Print the demo's environment as KEY=value lines, for `export $(make -s demo-env)`."""
    shown = environment()
    for key in (local_server.HOME_ENV, "PREFECT_HOME", "PREFECT_API_URL", "NOVI_MAILMAN_LEDGER", "NOVI_MAILMAN_REPORTS"):
        if key in shown:
            print(f"{key}={shown[key]}")


if __name__ == "__main__":
    {"demo": demo, "up": up, "down": down, "ui": ui, "env": env, "deploy": deploy}[sys.argv[1] if len(sys.argv) > 1 else "demo"]()
