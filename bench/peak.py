"""Run a command and write its own peak RSS (kB) to a file.

    python -m bench.peak OUT_FILE COMMAND...

Linux charges a child with its parent's memory high-water mark when it execs, so a command
started straight from the benchmark (which holds pandas) would never show less than the
benchmark itself. Started from this small process instead, a command's figure is its own.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path


def main() -> None:
    out, command = Path(sys.argv[1]), sys.argv[2:]
    process = subprocess.Popen(command)
    for sig in (signal.SIGINT, signal.SIGTERM):  # a stopped benchmark stops what it measures too
        signal.signal(sig, lambda number, _: process.send_signal(number))
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    out.write_text(str(usage.ru_maxrss))
    sys.exit(process.returncode)


if __name__ == "__main__":
    main()
