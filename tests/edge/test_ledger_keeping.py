"""Keeping the ledger no longer than needed: retention (prune) and erasure (forget), on SQLite
and PostgreSQL, and the erased people's opt-outs a run still honours."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from tasks import ledger_keeping
from tasks.core.members import members_frame
from tasks.ledger import Ledger
from tasks.ledger_schema import (addresses_table, changes_table, forgotten_table, metadata, run_lists_table,
                                 runs_table)
from tests.conftest import novi_record

L, M = "members.example.org", "board.example.org"
NOW = datetime(2026, 12, 1, 2, 15, tzinfo=timezone.utc)


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def address(list_id, key, status, *, novi_id=None, left_at=None, eligible_at=None, expires=None, first=None):
    return {"list_id": list_id, "match_key": key, "email": key, "novi_id": novi_id, "status": status,
            "how": "subscribed", "on_roster": status == "member", "eligible": status != "removed",
            "first_managed_at": first or ago(1000), "last_seen_on_roster_at": ago(1), "last_eligible_at": eligible_at,
            "left_at": left_at, "left_expires": expires, "run_id": "r-new"}


def change(run_id, at, list_id, key, action, outcome="applied", detail=None, novi_id=None):
    return {"run_id": run_id, "at": at, "list_id": list_id, "match_key": key, "email": key, "action": action,
            "outcome": outcome, "reason": "why", "detail": detail, "novi_id": novi_id}


def run_row(run_id, ended, state="completed", kind="full", message="done"):
    return {"run_id": run_id, "flow_run_id": run_id, "attempt": 1, "run_name": run_id, "started_at": ended,
            "ended_at": ended, "kind": kind, "state": state, "message": message, "novi_members": 9, "changes": 1,
            "failed": 0}


def figures(run_id, list_id):
    return {"run_id": run_id, "list_id": list_id, "eligible": 9, "roster": 9, "managed": 9, "changes": 1, "failed": 0}


@pytest.fixture
def lived_in(ledger_url):
    """A ledger with two years behind it, on two lists."""
    ledger = Ledger(ledger_url)
    with ledger.engine.begin() as conn:
        conn.execute(runs_table.insert(), [run_row("r-old", ago(400)), run_row("r-mid", ago(100)),
                                           run_row("r-failed", ago(200), state="failed"),
                                           run_row("r-new", ago(10))])
        conn.execute(run_lists_table.insert(), [figures("r-old", L), figures("r-mid", L), figures("r-new", L),
                                                figures("r-mid", M)])
        conn.execute(changes_table.insert(), [
            change("r-old", ago(400), L, "a@example.org", "subscribe"),
            change("r-old", ago(400), L, "chair@example.org", "moderate"),          # still a moderator
            change("r-old", ago(400), L, "exchair@example.org", "moderate"),
            change("r-mid", ago(100), L, "exchair@example.org", "unmoderate"),
            change("r-mid", ago(100), M, "a@example.org", "subscribe"),             # on the other list
            change("r-new", ago(10), L, "b@example.org", "subscribe"),
        ])
        conn.execute(addresses_table.insert(), [
            address(L, "a@example.org", "member"),
            address(L, "gone@example.org", "removed", left_at=ago(100)),             # lapsed long ago
            address(L, "recent@example.org", "removed", left_at=ago(10)),
            address(L, "quit@example.org", "left", left_at=ago(700), eligible_at=ago(1)),  # an opt-out
            address(L, "dead@example.org", "bounced", left_at=ago(300), eligible_at=ago(200)),
            address(L, "stillbad@example.org", "bounced", left_at=ago(300), eligible_at=ago(1)),
        ])
    return ledger


def keys(ledger, table, column="match_key", **where):
    query = select(table.c[column])
    for name, value in where.items():
        query = query.where(table.c[name] == value)
    with ledger.engine.connect() as conn:
        return sorted(row[0] for row in conn.execute(query))


def test_prune_removes_what_is_older_and_keeps_what_the_sync_needs(lived_in):
    before_figures = lived_in.last_figures([L])[L]["run_id"]
    removed = ledger_keeping.prune(lived_in, 90, [L], now=NOW)
    assert removed == {"changes": 3, "run_lists": 2, "managed_addresses": 2, "runs": 1}
    # changes: the old subscribe and the unmade moderator's two went; the chair who still is one stays
    assert keys(lived_in, changes_table, list_id=L) == ["b@example.org", "chair@example.org"]
    assert lived_in.moderators_made([L])["match_key"].tolist() == ["chair@example.org"]
    assert keys(lived_in, changes_table, list_id=M) == ["a@example.org"]  # another list: not this run's to prune
    # addresses: managed members and opt-outs whatever their age; lapsed and bounced long ago, gone
    assert keys(lived_in, addresses_table) == ["a@example.org", "quit@example.org", "recent@example.org",
                                               "stillbad@example.org"]
    # runs: the failed run with nothing left goes; r-old keeps its row for the chair's change
    assert keys(lived_in, runs_table, "run_id") == ["r-mid", "r-new", "r-old"]
    assert lived_in.last_figures([L])[L]["run_id"] == before_figures == "r-new"
    assert ledger_keeping.prune(lived_in, 90, [L], now=NOW) == dict.fromkeys(removed, 0)  # idempotent


def test_prune_keeps_a_lists_last_completed_run_however_old(ledger_url):
    """The collapse guard compares each list with its newest completed run: a list synced last a
    year ago keeps that run's figures."""
    ledger = Ledger(ledger_url)
    with ledger.engine.begin() as conn:
        conn.execute(runs_table.insert(), [run_row("r-1", ago(500)), run_row("r-2", ago(400))])
        conn.execute(run_lists_table.insert(), [figures("r-1", L), figures("r-2", L)])
    ledger_keeping.prune(ledger, 30, None, now=NOW)
    assert keys(ledger, run_lists_table, "run_id") == ["r-2"] and ledger.last_figures([L])[L]["run_id"] == "r-2"


def test_forget_erases_an_address_from_every_table_and_keeps_an_opt_out_without_it(lived_in):
    with lived_in.engine.begin() as conn:
        conn.execute(changes_table.insert(), [
            change("r-new", ago(10), L, "quit@example.org", "subscribe", novi_id="n-quit"),
            change("r-new", ago(10), L, "other@example.org", "left alone",
                   detail="Novi record n-9 is used; Quit@Example.org is another's"),
        ])
        conn.execute(runs_table.update().where(runs_table.c.run_id == "r-new")
                     .values(message="refused address quit@example.org"))
        conn.execute(addresses_table.update().where(addresses_table.c.match_key == "quit@example.org")
                     .values(novi_id="n-quit"))
    found = ledger_keeping.forget(lived_in, "Quit@Example.org", now=NOW)
    assert found["lists"] == {L: "left"} and found["opt_outs_kept"] == [L] and found["novi_ids"] == ["n-quit"]
    assert found["changes"] == 1 and found["details_blanked"] == 2
    with lived_in.engine.connect() as conn:  # searched, not assumed: every table, every cell
        everything = json.dumps({t.name: [[str(v) for v in row] for row in conn.execute(t.select())]
                                 for t in metadata.sorted_tables if t.name != "ledger_meta"}).casefold()
        markers = conn.execute(select(forgotten_table)).mappings().all()
    assert "quit@example.org" not in everything and "n-quit" not in everything
    assert [(m["list_id"], m["status"]) for m in markers] == [(L, "left")]
    assert ledger_keeping.export(lived_in, "quit@example.org")["tables"]["managed_addresses"] == []
    assert ledger_keeping.forget(lived_in, "nobody@example.org")["lists"] == {}


def test_an_erased_opt_out_stands_in_for_them_by_address_or_by_novi_id(lived_in):
    with lived_in.engine.begin() as conn:
        conn.execute(addresses_table.update().where(addresses_table.c.match_key == "quit@example.org")
                     .values(novi_id="n-quit"))
    ledger_keeping.forget(lived_in, "quit@example.org", now=NOW)
    members = members_frame([novi_record("n-quit", "quit@example.org"), novi_record("n-x", "x@example.org")])
    found = ledger_keeping.stand_ins(lived_in, [L, M], members)
    assert found[["list_id", "match_key", "status"]].values.tolist() == [[L, "quit@example.org", "left"]]
    assert found["left_at"].iloc[0] == ago(700)
    moved = members_frame([novi_record("n-quit", "new-address@example.org")])  # same person, another address
    assert ledger_keeping.stand_ins(lived_in, [L], moved)["match_key"].tolist() == ["new-address@example.org"]
    stranger = members_frame([novi_record("n-y", "y@example.org")])
    assert ledger_keeping.stand_ins(lived_in, [L], stranger).empty
    assert ledger_keeping.stand_ins(lived_in, [M], members).empty  # the opt-out was from L only


def test_prune_and_forget_at_the_command_line(tmp_path, monkeypatch):
    """The operator's commands, without a Prefect server (--skip-prefect): prune by the rules'
    period; forget refuses without --yes when nobody can be asked; no ledger, one line."""
    import os
    import time

    import yaml
    from typer.testing import CliRunner

    from flows.cli import app

    path = tmp_path / "ledger.sqlite"
    monkeypatch.setenv("NOVI_MAILMAN_LEDGER", str(path))
    runner = CliRunner()
    missing = runner.invoke(app, ["ledger", "prune", "--days", "30", "--skip-prefect"])
    assert missing.exit_code == 1 and "no ledger there yet" in missing.output and not path.exists()

    ledger = Ledger(f"sqlite:///{path}")
    with ledger.engine.begin() as conn:
        conn.execute(runs_table.insert(), [run_row("r-old", ago(400))])
        conn.execute(changes_table.insert(), [change("r-old", datetime.now(timezone.utc) - timedelta(days=45), L,
                                                     "a@example.org", "subscribe")])
        conn.execute(addresses_table.insert(), [address(L, "a@example.org", "member")])
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "plan-old-1.csv").write_text("list_id,email\n")
    (reports / "plan-new-2.csv").write_text("list_id,email\n")
    (reports / "notes.csv").write_text("not ours\n")
    os.utime(reports / "plan-old-1.csv", (time.time() - 45 * 86400,) * 2)
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"ledger": {"keep_history_days": 30}, "lists": [{"list_id": L}]}))

    pruned = runner.invoke(app, ["ledger", "prune", "--rules", str(rules), "--reports-dir", str(reports),
                                 "--skip-prefect"], env={"COLUMNS": "200"})
    assert pruned.exit_code == 0, pruned.output
    assert "Kept 30 days" in pruned.stdout and "1 changes" in pruned.stdout and "1 plan CSVs" in pruned.stdout
    assert sorted(p.name for p in reports.iterdir()) == ["notes.csv", "plan-new-2.csv"]

    refused = runner.invoke(app, ["ledger", "forget", "a@example.org", "--skip-prefect"])
    assert refused.exit_code == 1 and "give --yes" in refused.output and len(Ledger().read([L])) == 1
    forgotten = runner.invoke(app, ["ledger", "forget", "a@example.org", "--yes", "--skip-prefect",
                                    "--reports-dir", str(reports)], env={"COLUMNS": "200"})
    assert forgotten.exit_code == 0 and f"its memory on {L} (member)" in forgotten.stdout
    assert "Out of this tool's reach" in forgotten.stdout and Ledger().read([L]).empty
