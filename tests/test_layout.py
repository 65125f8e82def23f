"""The layout's promises, checked: a pure core, a light command line, contracts named once."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.core import schema

ROOT = Path(__file__).resolve().parents[1]
CORE = sorted(p.stem for p in (ROOT / "tasks" / "core").glob("*.py") if p.stem != "__init__")


def _loaded_after(code: str) -> set[str]:
    """The top-level packages a fresh interpreter has loaded after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_the_core_is_more_than_one_module():
    assert {"schema", "addresses", "rules", "planner", "guards"} <= set(CORE)


@pytest.mark.parametrize("module", CORE)
def test_the_pure_core_loads_no_prefect_requests_or_sqlalchemy(module):
    """tasks/rules.py once took dot_list_id from tasks/mailman.py: importing the planner loaded
    Prefect and requests (3.7 s)."""
    loaded = _loaded_after(f"import tasks.core.{module}")
    assert not loaded & {"prefect", "requests", "sqlalchemy", "httpx", "urllib3"}


def test_the_command_lines_help_loads_neither_prefect_nor_pandas():
    loaded = _loaded_after("from flows.cli import app\ntry:\n    app(['--help'])\nexcept SystemExit:\n    pass")
    assert "typer" in loaded  # the probe did run the command line
    assert not loaded & {"prefect", "pandas", "numpy", "sqlalchemy", "requests"}


@pytest.mark.parametrize("command", [["history", "nobody@example.org"], ["unlock", "members@example.org"]])
def test_history_and_unlock_on_the_default_ledger_start_without_prefect(command, tmp_path):
    """They read the ledger only; they imported tasks.run for `open_ledger`, and with it Prefect
    (about 2 of a 3 s `history`)."""
    loaded = _loaded_after(f"import os\nos.environ['NOVI_MAILMAN_LEDGER'] = {str(tmp_path / 'l.sqlite')!r}\n"
                           f"from flows.cli import app\ntry:\n    app({command!r})\nexcept SystemExit:\n    pass")
    assert "sqlalchemy" in loaded  # the probe did read the ledger
    assert "prefect" not in loaded



@pytest.mark.parametrize("package", ["prefect", "pandas", "sqlalchemy", "pydantic"])
def test_the_environment_is_installed_with_its_bytecode(package):
    """This machine (and CI) sets PYTHONDONTWRITEBYTECODE=1 and uv installs without bytecode:
    every `novi-mailman` process, Prefect server and worker compiled ~1,500 modules from source,
    4.4 s of a 9 s `plan`. `make install` compiles them once (uv sync --compile-bytecode)."""
    import importlib.util

    origin = importlib.util.find_spec(package).origin
    assert Path(importlib.util.cache_from_source(origin)).is_file(), f"{package} has no bytecode: {origin}"

# Every action, outcome and run state is named in tasks/core/schema.py; elsewhere they are
# imported. Field names (a dict key, a subscript, a table column) may share a word with them.
NAMES = {value for group in (schema.Action, schema.Outcome, schema.RunState)
         for key, value in vars(group).items() if not key.startswith("_")}


def _literals(tree: ast.AST) -> list[tuple[int, str]]:
    keys: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            keys |= {id(k) for k in node.keys if k is not None}
        elif isinstance(node, ast.Subscript):
            keys.add(id(node.slice))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Column" and node.args:
            keys.add(id(node.args[0]))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in NAMES and id(node) not in keys]


def test_no_action_outcome_or_state_is_a_string_literal_outside_the_schema():
    found = []
    for path in sorted([*(ROOT / "flows").rglob("*.py"), *(ROOT / "tasks").rglob("*.py")]):
        if path == ROOT / "tasks" / "core" / "schema.py":
            continue
        found += [f"{path.relative_to(ROOT)}:{line}: {value!r}"
                  for line, value in _literals(ast.parse(path.read_text(encoding="utf-8")))]
    assert not found, "\n".join(found)


def test_the_literal_check_finds_a_literal():
    assert _literals(ast.parse("if action == 'subscribe': pass\nx = {'failed': 1}")) == [(1, "subscribe")]
