"""The per-list plan table an analyst reads in the browser, and its cut: pure pandas, no Prefect run."""

import pandas as pd
import pytest

from tasks.core.schema import PLAN_ROW_COLUMNS
from tasks.report import ADDRESS_CHANGE, PLAN_TABLE_COLUMNS, artifact_key, capped, changes_line, done_message, \
    plan_table


def row(action, email, *, reason="", outcome="applied", novi_id=None, name=None, previous=None, detail=""):
    return dict(list_id="l.example.org", action=action, email=email, display_name=name, previous=previous,
                novi_id=novi_id, reason=reason, outcome=outcome, detail=detail)


def rows(*items) -> pd.DataFrame:
    return pd.DataFrame(list(items), columns=PLAN_ROW_COLUMNS)


def test_failures_first_then_removals_and_holds_then_other_changes_then_rows_left_alone():
    table = plan_table(rows(
        row("left alone", "staff@x.org", reason="unmanaged: not in Novi", outcome=""),
        row("subscribe", "new@x.org", reason="eligible, not on the list", novi_id="n1"),
        row("rename", "r@x.org", reason="name changed in Novi", novi_id="n2", name="New Name", previous="Old Name"),
        row("hold", "h@x.org", reason="status expired", novi_id="n3"),
        row("subscribe", "bad@x.org", reason="eligible, not on the list", outcome="failed", detail="400 refused",
            novi_id="n4"),
        row("unsubscribe", "u@x.org", reason="status expired", novi_id="n5"),
    ))
    assert list(table.columns) == PLAN_TABLE_COLUMNS
    assert list(table["email"]) == ["bad@x.org", "h@x.org", "u@x.org", "r@x.org", "new@x.org", "staff@x.org"]
    assert table.loc[0, ["outcome", "detail", "novi_id"]].tolist() == ["failed", "400 refused", "n4"]
    assert table.loc[3, "change"] == "Old Name → New Name" and table.loc[3, "name"] == "New Name"


def test_an_address_change_is_one_row_old_to_new_and_fails_if_either_half_failed():
    address_change = [
        row("unsubscribe", "old@x.org", reason="address changed in Novi", novi_id="n1", name="Pat"),
        row("subscribe", "new@x.org", reason="eligible, not on the list", novi_id="n1", name="Pat", outcome="failed",
            detail="500"),
    ]
    table = plan_table(rows(*address_change, row("subscribe", "other@x.org", novi_id="n2")))
    assert len(table) == 2
    moved = table.iloc[0]
    assert (moved["action"], moved["email"], moved["change"]) == (ADDRESS_CHANGE, "new@x.org", "old@x.org → new@x.org")
    assert (moved["outcome"], moved["detail"], moved["reason"]) == ("failed", "500", "address changed in Novi")
    # an old address whose new one is not subscribed (banned, say) stays a plain unsubscribe
    alone = plan_table(rows(address_change[0]))
    assert list(alone["action"]) == ["unsubscribe"] and alone.loc[0, "change"] == ""


@pytest.mark.parametrize("table_rows", [1, 3, 5, 50])
def test_the_cut_never_takes_a_failure_a_removal_or_a_hold(table_rows):
    items = [row("unsubscribe", f"u{i}@x.org", novi_id=f"u{i}") for i in range(3)]
    items += [row("hold", "h@x.org", novi_id="h"), row("subscribe", "f@x.org", outcome="failed", novi_id="f")]
    items += [row("subscribe", f"s{i}@x.org", novi_id=f"s{i}") for i in range(4)]
    items += [row("left alone", f"a{i}@x.org", outcome="") for i in range(10)]
    table = plan_table(rows(*items))
    kept, note = capped(table, table_rows)
    assert {"u0@x.org", "u1@x.org", "u2@x.org", "h@x.org", "f@x.org"} <= set(kept["email"])
    assert len(kept) == max(table_rows, 5) if table_rows < len(table) else len(kept) == len(table)
    assert list(kept["email"]) == list(table["email"])[:len(kept)]  # a cut takes the end, in the table's order
    if table_rows < len(table):
        assert "cut at" in note and "plan CSV" in note and "5 s" in note
    else:
        assert "cut" not in note and note.startswith("9 of 9 changes")


def test_counts_and_messages():
    changes = rows(row("subscribe", "a@x.org"), row("subscribe", "b@x.org"), row("unsubscribe", "c@x.org"),
                   row("rename", "d@x.org"), row("hold", "e@x.org"))
    assert changes_line(changes) == "+2 −1 held 1 renamed 1 on l.example.org"
    assert done_message(changes, dry_run=False) == "+2 −1 held 1 renamed 1 on l.example.org (5 changes applied)"
    assert done_message(changes, dry_run=True) == ("Dry run, nothing written; planned: "
                                                   "+2 −1 held 1 renamed 1 on l.example.org")
    assert done_message(changes.iloc[0:0], dry_run=False) == "No changes: every list is already in step with Novi"
    # a dry run says so first whatever it found: the alerts do not take it for a sync (issue 29)
    assert done_message(changes.iloc[0:0], dry_run=True) == ("Dry run, nothing written: every list is already in "
                                                             "step with Novi")
    # Mailman had them already (a rerun's): not said to be applied (issue 27, item 12)
    already = changes.head(2).assign(outcome="already so")
    assert done_message(already, dry_run=False) == "+2 on l.example.org (2 already so in Mailman)"
    assert done_message(pd.concat([already, changes.tail(1)]), dry_run=False).endswith(
        "(1 changes applied, 2 already so in Mailman)")


def test_runs_of_one_name_keep_plan_files_of_their_own(tmp_path):
    from tasks.report import write_plan_csv

    first = write_plan_csv(rows(row("subscribe", "a@x.org")), tmp_path, "nightly", "0d2c9f3e-aaaa")
    second = write_plan_csv(rows(row("subscribe", "b@x.org")), tmp_path, "nightly", "7b1e22aa-bbbb")
    assert first != second and first.name == "plan-nightly-0d2c9f3e.csv"
    assert "a@x.org" in first.read_text() and "b@x.org" in second.read_text()


def test_a_dry_runs_artifacts_have_keys_of_their_own():
    assert artifact_key("novi-mailman-summary", dry_run=False) == "novi-mailman-summary"
    assert artifact_key("novi-mailman-summary", dry_run=True) == "novi-mailman-dry-run-summary"
    assert artifact_key("novi-mailman-plan", True, "Members@Example.org") == "novi-mailman-dry-run-plan-members-example-org"
    assert artifact_key("novi-mailman-plan", False, "m@x.org", refused=True) == "novi-mailman-refused-plan-m-x-org"


def test_a_second_old_address_of_one_person_stays_a_row_of_its_own():
    """Two old addresses of one Novi id on a list (an earlier removal failed): each stays visible."""
    table = plan_table(rows(
        row("unsubscribe", "old1@x.org", reason="address changed in Novi", novi_id="n1", outcome="failed"),
        row("unsubscribe", "old2@x.org", reason="address changed in Novi", novi_id="n1"),
        row("subscribe", "new@x.org", reason="eligible, not on the list", novi_id="n1")))
    assert sorted(table["email"]) == ["new@x.org", "old2@x.org"]  # old1 is the address change's "old"
    moved = table.loc[table["action"] == ADDRESS_CHANGE].iloc[0]
    assert moved["change"] == "old1@x.org → new@x.org" and moved["outcome"] == "failed"


def test_address_changes_are_never_cut():
    items = [row("unsubscribe", f"o{i}@x.org", reason="address changed in Novi", novi_id=f"n{i}") for i in range(5)]
    items += [row("subscribe", f"n{i}@x.org", novi_id=f"n{i}") for i in range(5)]
    items += [row("subscribe", f"s{i}@x.org", novi_id=f"s{i}") for i in range(5)]
    kept, note = capped(plan_table(rows(*items)), 2)
    assert (kept["action"] == ADDRESS_CHANGE).sum() == 5 and "cut at 2" in note
    # the table's 10 rows are the run's 15 changes: said, as the message counts them (issue 29, item 7)
    assert "5 address changes are one row for two changes (the old address off, the new on)" in note


def test_novi_text_in_the_summary_is_text_not_markup():
    """Issue 27, item 11: HTML, `javascript:` links and `|` from Novi reached the summary's
    markdown as markup (a `|` broke its table)."""
    from tasks.core.planner import plan_changes
    from tasks.core.rules import parse_rules
    from tasks.core.members import members_frame
    from tasks.report import summarise, summary_markdown
    from tests.conftest import novi_record, roster_frame

    hostile = "<img src=x onerror=alert(1)> [click](javascript:alert(1)) | x"
    rules = parse_rules({"lists": [{"list_id": "l.example.org", "custom_fields": {"Chapter": ["North"]},
                                    "allow_empty": True}]})
    record = novi_record("p", "p@x.org", CustomFields={"Chapter": {"CustomFieldName": "Chapter", "Value": hostile}})
    plan = plan_changes(members_frame([record]), {"l.example.org": roster_frame("l.example.org", [("p@x.org", "P")])},
                    rules)
    outcomes = plan.changes.assign(outcome="applied", detail="")
    text = summary_markdown(summarise(plan, outcomes, dry_run=False, state="completed", message="done",
                                      novi_members=1, duration_s=1.0, plan_csv=None, ledger="l"))
    (row,) = [line for line in text.splitlines() if "onerror" in line]
    assert row.count("|") - row.count("\\|") == 4  # three cells: action, reason, count
    import re

    assert not re.search(r"(?<!\\)<img", text) and "](javascript:" not in text
    assert "\\<img src=x onerror=alert\\(1\\)\\> \\[click\\]\\(javascript:alert\\(1\\)\\) \\| x" in row
