"""The run's artifacts as an analyst reads them: in the Prefect UI, in a real browser 1,440 px
wide (issue 29, item 6). Measured, not assumed: the summary's table was cut before its "failed"
column, and plan tables were 2,096 px wide, so who was changed and why was off-screen."""

from __future__ import annotations

import json

import pandas as pd
from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from tasks.core.schema import PLAN_ROW_COLUMNS, Action, Outcome
from tasks.report import PLAN_KEY, SUMMARY_KEY, artifact_key, publish_plan_tables, summary_markdown


WIDTH = 1440
# As long as a lived-in site's values run: a 51-character list, a 50-character address.
LIST = "chapter-announcements@lists.example-association.org"
GUID = "5a1d0000-0000-4000-8000-00000000{:04d}"


def lived_in_rows() -> pd.DataFrame:
    """A list's plan rows with the long values a lived-in site has: long addresses and names, a
    failure with Mailman's words, duplicates and quarantined records, an address change."""
    rows = []

    def row(action, email, reason, outcome=Outcome.APPLIED, name="", previous=None, n=0, detail=""):
        rows.append({"list_id": LIST, "action": action, "email": email, "display_name": name, "previous": previous,
                     "novi_id": GUID.format(n), "reason": reason, "outcome": outcome, "detail": detail})

    row(Action.UNSUBSCRIBE, "maximiliane.oberhuber@mail.example-association.org", "status expired",
        Outcome.FAILED, n=1, detail="Mailman answered 500 Internal Server Error: (sqlite3.OperationalError) "
        "database is locked [SQL: UPDATE member SET ...]; retried 3 times")
    row(Action.UNSUBSCRIBE, "hiro.diaz258@mail.example.net", "address changed in Novi", n=2)
    row(Action.SUBSCRIBE, "hiro.diaz258.moved2@mail.example.net", "eligible, not on the list", n=2,
        name="Hiro Diaz")
    row(Action.HOLD, "bartholomew.featherstonehaugh@example.com",
        "no longer holds a position that moderates the list", n=3)
    row(Action.RENAME, "viktor.nguyen123@example.com", "name changed in Novi", previous="Viktor Nguyen",
        name="Dr. Viktor Nguyen-Featherstonehaugh, MBA", n=4)
    for i in range(5, 12):
        row(Action.SUBSCRIBE, f"new.member.{i}@subdomain.example-association.org", "eligible, not on the list",
            name=f"New Member Number {i}", n=i)
    frame = pd.DataFrame(rows, columns=PLAN_ROW_COLUMNS)
    alone = pd.DataFrame({"list_id": LIST, "action": "left alone", "email": "shared.inbox@example-association.org",
                          "novi_id": GUID.format(20), "reason": "duplicate address", "outcome": "",
                          "detail": f"Novi record {GUID.format(21)} is used"}, index=[0])
    return pd.concat([frame, alone], ignore_index=True).reindex(columns=PLAN_ROW_COLUMNS)


def lived_in_summary() -> dict:
    changes = {"subscribe": 1_204, "unsubscribe": 1_187, "hold": 35, "release": 12, "rename": 310}
    item = {"list_id": LIST, "eligible": 104_312, "roster": 104_290, "managed": 103_998, "in_step": 101_120,
            "changes": changes, "outcomes": {Outcome.APPLIED: 2_700, Outcome.FAILED: 51},
            "reasons": {"unsubscribe": {"status expired": 1_000}}, "left_alone": {"duplicate address": 3},
            "owner_notices": 0, "open_door": None, "banned_members": [], "banned": 0}
    return {"state": "completed", "message": "+1,204 −1,187 on " + LIST, "dry_run": False, "novi_members": 110_000,
            "quarantined": 12, "duration_s": 312.5, "lists": [item, {**item, "list_id": "board@example.org"}],
            "bouncing": {}, "quarantine_reasons": {}, "plan_csv": None, "ledger": "ledger.sqlite", "guards": [],
            "guards_overridden": False, "approved_plan": None}


@flow(name="artifact-layout")
def publish_like_a_run() -> None:
    create_markdown_artifact(summary_markdown(lived_in_summary()), key=SUMMARY_KEY)
    publish_plan_tables(lived_in_rows(), dry_run=False, table_rows=1_000)


# What the browser shows of each table on the page: each column's header, where it ends, and how
# many of its cells are cut (an ellipsis); and where the visible part of the table's scroll box ends.
MEASURE = """[...document.querySelectorAll('.artifact-data-table table, .markdown-renderer__table table')]
  .map(table => {
    let box = table.parentElement;
    while (box && getComputedStyle(box).overflowX === 'visible') box = box.parentElement;
    const right = Math.min(box.getBoundingClientRect().right, window.innerWidth);
    const heads = [...table.querySelectorAll('thead th')];
    return {table_width: table.scrollWidth, visible_right: right, columns: heads.map((th, i) => {
      const cells = [...table.querySelectorAll(`tbody tr > :nth-child(${i + 1})`)];
      return {name: th.innerText.trim(), left: th.getBoundingClientRect().left,
              right: th.getBoundingClientRect().right, cut: cells.filter(c => c.scrollWidth > c.clientWidth + 1).length};
    })};
  })"""


def measured(browser, ui: str, artifact_id: str) -> list[dict]:
    browser.open(f"{ui}/artifacts/artifact/{artifact_id}", wait_for="Created", seconds=90)
    tables = browser.evaluate(MEASURE)
    print(json.dumps(tables))
    return tables


def column(table: dict, name: str) -> dict:
    (found,) = [c for c in table["columns"] if c["name"] == name]
    return found


def whole(table: dict, name: str) -> bool:
    return column(table, name)["right"] <= table["visible_right"] and column(table, name)["cut"] == 0


def test_the_summary_and_plan_tables_read_whole_at_1440_px(tmp_path, monkeypatch):
    from sandbox.browser import Browser
    from sandbox.mailman import free_port
    from tasks import local_server

    monkeypatch.setenv("NOVI_MAILMAN_HOME", str(tmp_path / "home"))
    try:
        url = local_server.start(lambda line: None)
        with temporary_settings({PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: local_server.auth_string()}):
            publish_like_a_run()
            with get_client(sync_client=True) as client:
                def latest(key: str) -> str:
                    (found,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
                    return str(found.id)
                summary_id, plan_id = latest(SUMMARY_KEY), latest(artifact_key(PLAN_KEY, False, LIST))
        ui = url.removesuffix("/api")
        with Browser(free_port(), width=WIDTH, height=900) as browser:
            browser.sign_in(ui, local_server.auth_string())
            summary = measured(browser, ui, summary_id)
            plan = measured(browser, ui, plan_id)
    finally:
        local_server.stop()
    # the summary's tables whole, "failed" beside each list
    changes, rosters = summary[:2]
    assert [c["name"] for c in changes["columns"]] == ["list", "failed", "changes"]
    assert [c["name"] for c in rosters["columns"]] == ["list", "eligible", "on roster", "managed", "in step"]
    assert all(whole(table, c["name"]) for table in summary for c in table["columns"]), summary
    # a plan table: who, what, the outcome, then why, all in view; the details after them
    (table,) = plan
    assert [c["name"] for c in table["columns"]][:4] == ["email", "action", "outcome", "reason"]
    assert all(whole(table, name) for name in ("email", "action", "outcome")), table
    # the reason starts in view with room for ~36 characters beside a 50-character address (the
    # planner's reasons fit but "eligible; their request waiting for the moderator is resolved" and
    # the moderator ones); a longer one runs on past the edge, where the row scrolls
    assert table["visible_right"] - column(table, "reason")["left"] >= 280, table
