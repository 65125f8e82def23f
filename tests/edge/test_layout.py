"""The layout's promises, checked: a pure core, a light command line, contracts named once."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.core import schema

ROOT = Path(__file__).resolve().parents[2]
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
        # The migrations are history, written out as it was: they never import the schema,
        # whose names may change after them (a column of runs is called "failed").
        if path == ROOT / "tasks" / "core" / "schema.py" or ROOT / "tasks" / "migrations" in path.parents:
            continue
        found += [f"{path.relative_to(ROOT)}:{line}: {value!r}"
                  for line, value in _literals(ast.parse(path.read_text(encoding="utf-8")))]
    assert not found, "\n".join(found)


def test_the_literal_check_finds_a_literal():
    assert _literals(ast.parse("if action == 'subscribe': pass\nx = {'failed': 1}")) == [(1, "subscribe")]


FLOWS = sorted((ROOT / "flows").glob("*.py"))


def _wide_calls(source: str) -> list[str]:
    """Calls that pass more than five positional arguments (a table row's cells are varargs, not options)."""
    return [f"line {node.lineno}: {ast.unparse(node.func)}, {len(node.args)} positional"
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and len(node.args) > 5
            and not (isinstance(node.func, ast.Attribute) and node.func.attr == "add_row")]


@pytest.mark.parametrize("path", FLOWS, ids=lambda p: p.name)
def test_flows_pass_their_options_by_keyword(path):
    """Issue 30: `_sync_lists` took 13 positional arguments, `dry_run` beside `override_guards`."""
    assert _wide_calls(path.read_text()) == []


def test_the_wide_call_check_finds_one():
    assert _wide_calls("f(a, b, c, d, e, g)\nt.add_row(a, b, c, d, e, g)\nf(a, b, c, d, e, g=1)") == [
        "line 1: f, 6 positional"]


@pytest.mark.parametrize("path", FLOWS, ids=lambda p: p.name)
def test_flows_only_orchestrate_they_publish_no_artifact_themselves(path):
    """Issue 30: artifacts are made in tasks/ (report, history), from what the run returns."""
    imported = {node.module for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Import)
                 for alias in node.names}
    assert not {m for m in imported if m.startswith("prefect.artifacts")}


def test_the_readmes_map_names_every_module():
    """Issue 30: "How it works" missed six modules; a new one now fails here until it is named."""
    readme = (ROOT / "README.md").read_text()
    the_map = readme[readme.index("## How it works"):readme.index("## The sandbox")]
    modules = [p.relative_to(ROOT).as_posix() for folder in ("flows", "tasks", "tasks/core")
               for p in sorted((ROOT / folder).glob("*.py")) if p.name != "__init__.py"]
    assert [m for m in modules if f"\n{m} " not in the_map] == []


def _imports_of_tasks() -> dict[str, set[str]]:
    """Which tasks modules each tasks module imports, at its top or inside a function."""
    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "tasks").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tasks"):
                found |= {node.module} if node.module != "tasks" else {f"tasks.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("tasks")}
        graph[name] = found - {name}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    circles, done = [], set()

    def walk(module: str, path: list[str]) -> None:
        for other in sorted(graph.get(module, ())):
            if other in path:
                circles.append(path[path.index(other):] + [other])
            elif other not in done:
                walk(other, [*path, other])
        done.add(module)

    for module in sorted(graph):
        walk(module, [module])
    return circles


def test_no_two_modules_of_tasks_import_each_other():
    """Issue 30: tasks/blocks.py and tasks/ledger.py imported each other (one of them inside a function)."""
    assert _circles(_imports_of_tasks()) == []
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_the_cores_tests_run_without_prefect_requests_or_sqlalchemy():
    """Issue 30: the core is pure, and so are its tests (tests/core): run on their own, in a fresh
    interpreter, they pass and leave none of the edge's packages loaded."""
    probe = ("import json, sys, pytest\n"
             "code = pytest.main(['tests/core', '-q', '-p', 'no:cacheprovider', '-p', 'no:xdist', '--no-header'])\n"
             "print(json.dumps([int(code), sorted(m for m in ('prefect', 'requests', 'sqlalchemy', 'httpx')"
             " if m in sys.modules)]))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    code, loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert (code, loaded) == (0, []), done.stdout[-3000:]
