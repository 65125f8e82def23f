"""The first hour's timings (issue 16), medians of 5, each command a process of its own as a user
runs it, against the demo's sandbox (`make demo` first; it stays up):

    .venv/bin/python -m bench.first_hour [--repeat 5]

1. `novi-mailman --help`;
2. the very first command on a fresh machine: `check` with an empty NOVI_MAILMAN_HOME and no
   PREFECT_API_URL, which starts the local Prefect server (its first start, a fresh database);
3. `novi-mailman plan` on the demo's 300-member sandbox once that server runs.
Prints one line per measurement and the medians; asserts nothing (README: The first hour).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sandbox import demo

ROOT = Path(__file__).resolve().parent.parent
COMMAND = str(Path(sys.executable).parent / "novi-mailman")


def timed(env: dict, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    done = subprocess.run([COMMAND, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=600)
    return time.monotonic() - started, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    repeat = parser.parse_args().repeat
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "COLUMNS"}
    base.update(NOVI_API_KEY=demo.DEFAULT_KEY, MAILMAN_PASSWORD=demo.ADMIN_PASS)
    results: dict[str, list[float]] = {"--help": [], "first command (server's first start)": [],
                                       "plan, 300 members, server running": []}
    for _ in range(repeat):
        seconds, _ = timed(base, "--help")
        results["--help"].append(seconds)
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="novi-mailman-home-") as home:
            env = {**base, "NOVI_MAILMAN_HOME": home, "PREFECT_PROFILES_PATH": f"{home}/profiles.toml",
                   "NOVI_MAILMAN_LEDGER": f"{home}/ledger.sqlite", "NOVI_MAILMAN_REPORTS": f"{home}/reports"}
            seconds, done = timed(env, "blocks", "--novi-url", demo.NOVI_URL, "--mailman-url",
                                  f"http://127.0.0.1:{demo.MAILMAN_PORT}", "--mailman-user", demo.ADMIN_USER)
            assert done.returncode == 0, done.stderr[-2000:]
            results["first command (server's first start)"].append(seconds)
            for _ in range(1 if results["plan, 300 members, server running"] else repeat):
                seconds, done = timed(env, "plan", "--rules", "sandbox/demo-rules.yaml")
                assert done.returncode in (0, 3), done.stderr[-2000:]
                results["plan, 300 members, server running"].append(seconds)
            timed(env, "server", "stop")
    load = os.getloadavg()[0]
    for name, values in results.items():
        print(f"{name}: median {statistics.median(values):.2f} s "
              f"({', '.join(f'{v:.2f}' for v in values)}); load average {load:.2f}")


if __name__ == "__main__":
    main()
