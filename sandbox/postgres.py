"""A throwaway PostgreSQL cluster on 127.0.0.1, for the ledger's tests and the benchmark."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def server_bin() -> Path | None:
    """Where PostgreSQL's server programs are (Debian keeps them off PATH), or None."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


@contextmanager
def cluster(bindir: Path) -> Iterator[str]:
    """A fresh cluster in a temporary directory, trusted from 127.0.0.1 only, with fsync off (it
    holds nothing worth keeping); yields its SQLAlchemy URL without a database name, and stops
    it and removes its files on the way out."""
    data = Path(tempfile.mkdtemp(prefix="novi-mailman-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres user
        shutil.chown(data, "postgres", "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres",
                    "--no-sync"], check=True, capture_output=True)
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {data} -c fsync=off"
    subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-o", options, "-l",
                    str(data / "server.log"), "-w", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "-w", "stop"],
                       check=False, capture_output=True)  # stopping is best effort; the files go anyway
        shutil.rmtree(data, ignore_errors=True)


def fresh_database(server: str, name: str) -> str:
    """An empty database `name` on `server` (dropped first if it was there); its URL."""
    import psycopg  # the postgres extra; only those who use a PostgreSQL ledger need it

    with psycopg.connect(f"{server.replace('postgresql+psycopg', 'postgresql')}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"
