"""Members' personal data through whole runs (issue 31): erasure everywhere the tool stored a
person (ledger, plan CSVs, artifacts and runs on a real Prefect test server), what the next
runs then do, and retention after a real run."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta, timezone

import yaml
from prefect.client.orchestration import get_client
from sqlalchemy import select
from typer.testing import CliRunner

from flows.cli import app
from tasks.ledger import Ledger
from tasks.ledger_schema import changes_table, forgotten_table, metadata
from tests.conftest import novi_record
from tests.fakes import FakeMailman, FakeNovi
from tests.runs.sync_harness import LIST, run, writes

ANN, LAP, QUIT = "ann-31@example.org", "lap-31@example.org", "quit-31@example.org"


def everything_prefect_holds() -> str:
    """Every artifact (data and description) and every flow run's name and parameters on the
    server, as one lower-case text: what an erasure is searched in."""
    texts, offset = [], 0
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_artifacts(limit=200, offset=offset)
            texts += [f"{a.key} {a.description} {a.data if isinstance(a.data, str) else json.dumps(a.data)}"
                      for a in page]
            if len(page) < 200:
                break
            offset += 200
        texts += [f"{r.name} {json.dumps(r.parameters)} {r.state.message if r.state else ''}"
                  for r in client.read_flow_runs(limit=200)]
    return "\n".join(texts).casefold()


def everything_the_ledger_holds() -> str:
    with Ledger().engine.connect() as conn:
        return json.dumps({t.name: [[str(v) for v in row] for row in conn.execute(t.select())]
                           for t in metadata.sorted_tables if t.name != "ledger_meta"}).casefold()


def test_forget_erases_a_person_everywhere_and_the_next_runs_do_right_by_each(blocks, tmp_path, ledger_url,
                                                                             monkeypatch):
    from flows.history import address_history

    monkeypatch.setenv("NOVI_MAILMAN_LEDGER", ledger_url)  # on SQLite and on PostgreSQL

    records = [novi_record("n-ann", ANN), novi_record("n-lap", LAP), novi_record("n-quit", QUIT),
               novi_record("n-stay", "stay-31@example.org")]
    novi, mailman = FakeNovi(records), FakeMailman({LIST: {}})
    assert run(novi, mailman, tmp_path)[0].is_completed()          # all four subscribed
    records[1]["MemberStatus"] = "expired"
    del mailman.rosters[LIST][QUIT]                                 # Quit leaves by herself
    assert run(novi, mailman, tmp_path)[0].is_completed()          # Lap removed, Quit remembered as left
    assert address_history(address=QUIT, return_state=True).is_completed()  # a history run named after her
    assert QUIT in everything_prefect_holds() and QUIT in everything_the_ledger_holds()
    assert any(QUIT in path.read_text() for path in tmp_path.glob("plan-*.csv"))

    runner = CliRunner()
    for who in (ANN, LAP, QUIT):
        said = runner.invoke(app, ["ledger", "forget", who.upper(), "--yes", "--reports-dir", str(tmp_path), "--json"])
        assert said.exit_code == 0, said.output
    erased = json.loads(said.stdout)
    assert erased["lists"] == {LIST: "left"} and erased["opt_outs_kept"] == [LIST]
    assert erased["history_runs_deleted"] == 1 and erased["artifacts"] >= 2 and erased["csv_rows"] >= 2

    held = everything_prefect_holds()
    for needle in (ANN, LAP, QUIT, "n-ann", "n-lap", "n-quit"):
        assert needle not in held, needle
        assert needle not in everything_the_ledger_holds(), needle
        assert not any(needle in path.read_text().casefold() for path in tmp_path.glob("plan-*.csv")), needle
    assert "stay-31@example.org" in held  # nobody else was touched

    # The next run: Ann, a current member, is adopted again without a write; Lap, lapsed, is left
    # off; Quit, who left by herself, is not put back, and her address is not stored again.
    state, calls = run(novi, mailman, tmp_path)
    assert state.is_completed() and writes(calls) == []
    ledger = Ledger()
    memory = ledger.read([LIST]).set_index("match_key")
    assert memory.loc[ANN, "how"] == "adopted" and LAP not in memory.index and QUIT not in memory.index
    assert QUIT not in everything_the_ledger_holds()
    with ledger.engine.connect() as conn:
        assert len(conn.execute(select(forgotten_table)).all()) == 1

    # She joins again by herself: she is a member, stored as one, and the opt-out marker goes.
    mailman.rosters[LIST][QUIT] = FakeMailman.new_member(LIST, QUIT, "Pat N-QUIT")
    state, calls = run(novi, mailman, tmp_path)
    assert state.is_completed() and writes(calls) == []
    assert Ledger().read([LIST]).set_index("match_key").loc[QUIT, "status"] == "member"
    with ledger.engine.connect() as conn:
        assert conn.execute(select(forgotten_table)).all() == []


def test_a_real_run_removes_what_is_older_than_the_retention_period(blocks, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"ledger": {"keep_history_days": 2}, "lists": [{"list_id": LIST}]}))
    records = [novi_record("n-r1", "r1-31@example.org"), novi_record("n-r2", "r2-31@example.org")]
    novi, mailman = FakeNovi(records), FakeMailman({LIST: {}})
    assert run(novi, mailman, tmp_path, rules_path=str(rules), list_id=None)[0].is_completed()
    ledger = Ledger()
    three_days_ago = datetime.now(timezone.utc) - timedelta(days=3)
    with ledger.engine.begin() as conn:  # the first run's history, made three days old
        conn.execute(changes_table.update().values(at=three_days_ago))
    (old_csv,) = tmp_path.glob("plan-*.csv")
    os.utime(old_csv, (time.time() - 3 * 86400,) * 2)

    records.append(novi_record("n-r3", "r3-31@example.org"))
    assert run(novi, mailman, tmp_path, rules_path=str(rules), list_id=None)[0].is_completed()
    history = ledger.history("r1-31@example.org")
    assert history.empty and ledger.history("r3-31@example.org")["action"].tolist() == ["subscribe"]
    assert ledger.read([LIST])["match_key"].nunique() == 3  # who it manages is kept whatever its age
    assert not old_csv.exists() and len(list(tmp_path.glob("plan-*.csv"))) == 1


def test_old_artifacts_go_and_nobody_elses(blocks, tmp_path):
    """This tool's artifacts of runs started before the cut, of one deployment or of none; an
    artifact of another tool stays."""
    from prefect.artifacts import create_markdown_artifact
    from prefect import flow

    from tasks import retention

    @flow
    def someone_elses():
        create_markdown_artifact("their own", key="someone-elses-report")

    someone_elses()
    records = [novi_record("n-o1", "o1-31@example.org")]
    assert run(FakeNovi(records), FakeMailman({LIST: {}}), tmp_path)[0].is_completed()
    with get_client(sync_client=True) as client:
        removed = retention.old_artifacts(client, datetime.now(timezone.utc), deployment_id=None)
        left = [a.key for a in client.read_artifacts(limit=200)]
    assert removed >= 2 and "someone-elses-report" in left
    assert not [key for key in left if key.startswith(retention.OURS)]
