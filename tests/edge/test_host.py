"""Facts about processes that the locks and the server stops rely on."""

import subprocess
import time

from tasks.host import process_alive, wait_gone


def test_a_running_process_is_alive():
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert process_alive(child.pid)
    finally:
        child.kill()
        child.wait()


def test_a_process_that_exited_but_was_not_reaped_is_not_alive():
    # A server this process started and then stopped stays a zombie until it is reaped: stops
    # that counted it alive waited out their whole timeout (30 s a server in the test suite).
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.05)
    try:
        assert not process_alive(child.pid)
    finally:
        child.wait()


def test_wait_gone_leaves_a_process_that_ends_on_its_own_to_end_on_its_own():
    child = subprocess.Popen(["sleep", "0.3"])
    wait_gone(child.pid, 20)
    assert child.wait() == 0  # not killed: it ended by itself
    assert not process_alive(child.pid)
