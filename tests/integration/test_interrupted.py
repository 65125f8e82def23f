"""Runs interrupted mid-apply: killed, or Mailman stopped under them. A rerun converges."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import yaml
from prefect.settings import PREFECT_API_URL

import tasks.run as run_module
from sandbox.mailman import ADMIN_PASS, MailmanAdmin, MailmanCore, free_port
from tasks.blocks import MailmanCredentials
from tasks.ledger import Ledger
from tasks.mailman import apply_batch
from tests.integration.helpers import expected, lists_for, mail_to, sync, wait_for



def settled(read, quiet: float = 1.5):
    """What `read` returns once it has stopped changing for `quiet` seconds."""
    last = read()
    while True:
        time.sleep(quiet)
        now = read()
        if now == last:
            return now
        last = now


def test_a_run_killed_mid_apply_is_finished_by_the_rerun(world, tmp_path, isolated_ledger):
    world["novi"].reset(size=500, seed=5, domain=world["domain"])
    (members,) = lists_for(world, "killed")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"lists": [{"list_id": members}]}))
    target = expected(world["novi"].records())
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "NOVI_MAILMAN_REPORTS": str(tmp_path)}
    process = subprocess.Popen([sys.executable, "-m", "flows.cli", "sync", "--rules", str(rules), "--novi-block",
                                "it-novi", "--mailman-block", "it-mailman", "--batch-size", "20"],
                               env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_for(lambda: len(world["admin"].roster(members)) >= 40, seconds=120), "the run never began"
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # no clean-up of any kind: as if the machine died
        process.wait(timeout=30)
    partial = settled(lambda: world["admin"].roster(members))  # a request in flight at the kill may still land
    assert 40 <= len(partial) < len(target), "the run was not killed mid-apply"

    state, writes = sync(tmp_path, [{"list_id": members}])  # takes over the dead run's lock
    assert state.is_completed(), state.message
    assert world["admin"].roster(members) == target
    summary = state.result()
    remaining = len(set(target) - set(partial))
    assert summary["outcomes"] == {"applied": remaining}  # exactly the remainder: nothing twice
    assert len(writes) == remaining
    assert mail_to(world["core"], world["domain"]) == []
    assert len(Ledger().read([members])) == len(target)  # adopted what the killed run applied


def test_mailman_stopped_mid_apply_fails_the_run_and_the_rerun_converges(world, tmp_path, monkeypatch,
                                                                         tmp_path_factory):
    # A core of its own (REST-only), so stopping it leaves the other tests' core alone.
    core = MailmanCore(home=tmp_path_factory.mktemp("stopped-core"), port=free_port())
    core.start()
    try:
        MailmanCredentials(rest_url=core.rest_url, password=ADMIN_PASS).save("it-mailman-stopped", overwrite=True)
        admin = MailmanAdmin(core.rest_url)
        world["novi"].reset(size=500, seed=6, domain=world["domain"])
        members = admin.recreate_list(f"stopped-{world['tag']}@example.org")
        target = expected(world["novi"].records())
        monkeypatch.setattr(run_module, "apply_batch", apply_batch.with_options(retry_delay_seconds=1))

        result = {}

        def first_run():
            result["state"], _ = sync(tmp_path, [{"list_id": members}], mailman_block="it-mailman-stopped",
                                      batch_size=20)

        runner = threading.Thread(target=first_run)
        runner.start()
        assert wait_for(lambda: len(admin.roster(members)) >= 40, seconds=120), "the run never began"
        core.stop()
        runner.join(timeout=300)
        state = result["state"]
        assert state.is_failed() and "changes failed; rerun to retry them" in state.message

        core.start()
        partial = settled(lambda: admin.roster(members))
        again, writes = sync(tmp_path, [{"list_id": members}], mailman_block="it-mailman-stopped")
        assert again.is_completed(), again.message
        assert admin.roster(members) == target
        assert again.result()["outcomes"] == {"applied": len(set(target) - set(partial))}
    finally:
        core.stop()
