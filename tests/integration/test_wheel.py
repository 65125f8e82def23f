"""The package as production gets it: the wheel built, installed in a fresh virtualenv, and run
from outside the checkout (so nothing is imported from the source tree)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from prefect.settings import PREFECT_API_URL

from tests.integration.helpers import expected, lists_for

ROOT = Path(__file__).resolve().parents[2]


def _uv() -> str:
    """The Makefile's pinned uv (NOVI_MAILMAN_UV), else one on PATH: a test that cannot build fails."""
    found = os.environ.get("NOVI_MAILMAN_UV") or shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
    assert Path(found).exists(), "uv is needed to build the wheel: run the tests with `make test`"
    return found


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel's `novi-mailman`, in a virtualenv of its own."""
    work = tmp_path_factory.mktemp("wheel")
    uv = _uv()
    subprocess.run([uv, "build", "--wheel", "--out-dir", str(work / "dist"), str(ROOT)], check=True,
                   capture_output=True, timeout=300)
    (wheel,) = (work / "dist").glob("novi_mailman-*.whl")
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(work / "venv")], check=True,
                   capture_output=True, timeout=120)
    subprocess.run([uv, "pip", "install", "--quiet", "--python", str(work / "venv" / "bin" / "python"), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    return work


def test_the_wheel_ships_what_production_needs_and_nothing_of_the_workshop(installed):
    (wheel,) = (installed / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"flows", "tasks"}
    assert "tasks/core/planner.py" in names
    # The ledger's migrations travel inside the package: a real run's first open needs them.
    assert {"tasks/migrations/env.py", "tasks/migrations/versions/0001_baseline.py"} <= set(names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "novi-sandbox" not in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_installed_command_answers_help_and_plans_against_the_sandbox(installed, world, tmp_path):
    (members,) = lists_for(world, "wheel")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"lists": [{"list_id": members}]}))
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "NOVI_MAILMAN_REPORTS": str(tmp_path),
           "PYTHONPATH": ""}
    command = str(installed / "venv" / "bin" / "novi-mailman")
    helped = subprocess.run([command, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "sync" in helped.stdout, helped.stderr

    planned = subprocess.run([command, "plan", "--rules", str(rules), "--novi-block", "it-novi", "--mailman-block",
                              "it-mailman", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300, stdin=subprocess.DEVNULL)
    assert planned.returncode == 0, planned.stderr[-2000:]
    summary = json.loads(planned.stdout.strip().splitlines()[-1])
    assert summary["dry_run"] is True
    assert summary["lists"][0]["changes"]["subscribe"] == len(expected(world["novi"].records()))
    assert world["admin"].roster(members) == {}  # a dry run writes nothing
    where = subprocess.run([str(installed / "venv" / "bin" / "python"), "-c", "import tasks; print(tasks.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert str(installed / "venv") in where.stdout  # the installed package ran, not the checkout
    upgraded = subprocess.run([command, "ledger", "upgrade"], cwd=tmp_path, timeout=120, capture_output=True, text=True,
                              env={**env, "NOVI_MAILMAN_LEDGER": str(tmp_path / "wheel-ledger.sqlite")})
    assert upgraded.returncode == 0 and "Made a new ledger" in upgraded.stdout, upgraded.stderr[-2000:]
