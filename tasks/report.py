"""What a run did and why: the summary dict, the markdown summaries (full and member runs), the
changes table and the plan CSV."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx
import pandas as pd
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.core.digest import changes_line, counted
from tasks.core.planner import Plan
from tasks.core.text import markdown_cell as md
from tasks.core.schema import (ACTIONS, BOUNCING, MEMBER_ACTIONS, LEFT_ALONE, PLAN_ROW_COLUMNS, QUARANTINED, REMOVING, Action,
                                REASON_ADDRESS_CHANGED, REASON_BANNED, Outcome, RunState, RunSummary, UndoSummary,
                                missing_as_none, note)

REPORTS_DIR_ENV = "NOVI_MAILMAN_REPORTS"  # where plan CSVs go when a run names no reports_dir
SUMMARY_KEY = "novi-mailman-summary"
MEMBER_SUMMARY_KEY = "novi-mailman-member-sync"
LISTED = 100  # rows of one kind a summary names one by one; all are in the plan CSV
PLAN_KEY = "novi-mailman-plan"   # + the list, one table per list: novi-mailman-plan-members-example-org
QUARANTINE_KEY = "novi-mailman-quarantine"
BOUNCING_KEY = "novi-mailman-bouncing"
UNDO_KEY = "novi-mailman-undo"
# Rows of a list's plan table at most (README "Reading the artifacts": where the browser copes).
TABLE_ROWS, MAX_TABLE_ROWS = 1000, 5000
UI_TABLE_COST = "measured on 2 cores: 1,000 rows in 5 s, 2,000 in 12 s, 5,000 in 45 s"  # make screenshots
DRY_RUN_PREFIX = "novi-mailman-dry-run-"  # a dry run's artifacts never become a real run's latest
REFUSED_PREFIX = "novi-mailman-refused-"  # nor a refused plan's

# The per-list plan table: what an analyst reads in the browser, worst first.
# Who and what first, the outcome, then why (the one long column of the four), details after:
# at 1,440 px the UI shows ~880 px of a table (tests/integration/test_artifact_layout.py).
PLAN_TABLE_COLUMNS = ["email", "action", "outcome", "reason", "change", "name", "novi_id", "detail"]
ADDRESS_CHANGE = "address change"   # an unsubscribe of the old address and a subscribe of the new, one row


def artifact_key(key: str, dry_run: bool, list_id: str | None = None, refused: bool = False) -> str:
    """A keyed artifact's key: a dry run's and a refused plan's are their own (a run refused, then
    approved, held two versions of each key in no order, and a refused plan read like an applied
    one); a list's table carries the list id."""
    if dry_run:
        key = DRY_RUN_PREFIX + key.removeprefix("novi-mailman-")
    elif refused:
        key = REFUSED_PREFIX + key.removeprefix("novi-mailman-")
    return key if list_id is None else f"{key}-{re.sub(r'[^a-z0-9]+', '-', list_id.lower()).strip('-')}"


def done_message(outcomes: pd.DataFrame, dry_run: bool) -> str:
    """A completed run's message."""
    if outcomes.empty:
        # A dry run's message always starts so: the alerts tell it from a sync by that (tasks.alerts)
        return ("Dry run, nothing written: " if dry_run else "No changes: ") + "every list is already in step with Novi"
    if dry_run:
        return f"Dry run, nothing written; planned: {changes_line(outcomes)}"
    applied = int((outcomes["outcome"] == Outcome.APPLIED).sum())
    already = int((outcomes["outcome"] == Outcome.ALREADY).sum())
    said = ([f"{applied:,} changes applied"] if applied or not already else []) + (
        [f"{already:,} already so in Mailman"] if already else [])
    return f"{changes_line(outcomes)} ({', '.join(said)})"


def _counts(series: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in series.value_counts().sort_index().items()}


def summarise(plan: Plan, outcomes: pd.DataFrame, *, dry_run: bool, state: str, message: str,
              novi_members: int, duration_s: float, plan_csv: str | None, ledger: str,
              guards: list[str] | None = None, guards_overridden: bool = False,
              approved: str | None = None, owner_notices: dict[str, int] | None = None,
              open_doors: dict[str, str] | None = None) -> RunSummary:
    """The run as one plain dict (the `RunSummary` contract): what the flow returns and `--json`
    prints. `Run.finish` adds what the run knows at its end."""
    lists = []
    for figure in plan.figures.to_dict("records"):
        list_id = figure["list_id"]
        mine = outcomes.loc[outcomes["list_id"] == list_id]
        alone = plan.left_alone.loc[plan.left_alone["list_id"] == list_id]
        lists.append({
            **{k: (int(v) if k != "list_id" else v) for k, v in figure.items()},
            "changes": {a: int((mine["action"] == a).sum()) for a in ACTIONS},
            "outcomes": _counts(mine["outcome"]),
            "reasons": {a: _counts(mine.loc[mine["action"] == a, "reason"])
                        for a in ACTIONS if (mine["action"] == a).any()},
            "left_alone": _counts(alone["reason"]),
            # what Mailman mails the list's owners for this plan by itself (tasks.core.notices)
            "owner_notices": (owner_notices or {}).get(list_id, 0),
            # a subscription policy that lets people join around Novi (tasks.core.notices), else None
            "open_door": (open_doors or {}).get(list_id),
            # for the list owner: eligible members Mailman bans, who will not receive the list
            "banned_members": missing_as_none(alone.loc[alone["reason"] == REASON_BANNED, ["email", "novi_id"]]
                                              .head(LISTED)).to_dict("records"),
        })
    return {  # type: ignore[typeddict-item]  # the run's own facts come at its end (Run.finish)
        "state": state,
        "message": message,
        "dry_run": dry_run,
        "duration_s": round(duration_s, 2),
        "novi_members": novi_members,
        "quarantined": len(plan.quarantined),
        "quarantine_reasons": _counts(plan.quarantined["quarantine"]),
        # for membership staff: Novi records whose address bounces (each in the bouncing artifact)
        "bouncing": _counts(plan.bouncing["state"]),
        "changes": len(outcomes),
        "outcomes": _counts(outcomes["outcome"]),
        "lists": lists,
        "plan_csv": plan_csv,
        "ledger": ledger,
        "guards": guards or [],
        "guards_overridden": guards_overridden,
        "approved_plan": approved,   # the fingerprint an operator approved, when guards had refused it
    }


def shown_actions(lists: list[dict]) -> list[str]:
    """The actions a summary table has columns for: the membership ones always, the moderator
    ones where a list has such changes (most never do)."""
    return [a for a in ACTIONS if a in MEMBER_ACTIONS or any(item["changes"].get(a) for item in lists)]


def summary_markdown(summary: dict) -> str:
    """The run's summary for an analyst: per list, counts by action, outcome and reason."""
    def own(key: str) -> str:  # this run's key of an artifact (a dry run's and a refusal's are their own)
        return artifact_key(key, summary["dry_run"], refused=summary["state"] == RunState.REFUSED)

    if summary["dry_run"]:
        mode = "Dry run: nothing was written."
    elif summary["state"] == RunState.REFUSED:
        mode = "Refused by a safety guard: nothing was written. The tables show what would have happened."
    else:
        mode = "Changes were applied to Mailman."
    if summary.get("guards_overridden"):
        mode += " **Guards were lifted for this run by the operator:** " + " ".join(summary["guards"])
    if summary.get("approved_plan"):
        mode += (f" **Plan {summary['approved_plan']} was applied as approved by the operator**, over these "
                 "guards: " + " ".join(summary["guards"]))
    title = "Dry run of the Novi → Mailman sync (nothing written)" if summary["dry_run"] else "Novi → Mailman sync"
    lines = [f"# {title}: {summary['state']}", "", f"**{md(summary['message'])}**", "", mode, "",
             f"Novi members read: {summary['novi_members']:,} · quarantined: {summary['quarantined']:,} · "
             f"duration: {summary['duration_s']} s", ""]
    # Two narrow tables, not one wide one: the browser draws a table as wide as its cells and the
    # UI leaves ~880 px beside its panels at 1,440 px (measured, tests/integration/test_artifact_layout.py).
    lines += ["| list | failed | changes |", "|---|---:|---|"]
    lines += [f"| {md(item['list_id'])} | {item['outcomes'].get(Outcome.FAILED, 0):,} | "
              f"{counted(item['changes']) or 'none'} |" for item in summary["lists"]]
    lines += ["", "Changes as the run's message counts them: + subscribed, − unsubscribed, held, released, "
              "renamed, moderators + and −" + (" (planned, not applied)." if summary["dry_run"] or
                                              summary["state"] == RunState.REFUSED else "."), "",
              "| list | eligible | on roster | managed | in step |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {md(item['list_id'])} | {item['eligible']:,} | {item['roster']:,} | {item['managed']:,} | "
              f"{item['in_step']:,} |" for item in summary["lists"]]
    for item in summary["lists"]:
        if item["open_door"]:
            lines += ["", f"Anyone can join {md(item['list_id'])} without Novi: its subscription policy is "
                      f"`{item['open_door']}`. Set it to `moderate` in Postorius (or the list's settings) so that "
                      "members come from Novi only."]
    noticed = [item for item in summary["lists"] if item["owner_notices"]]
    if noticed:  # Mailman mails the owners by itself for each subscribe (tasks.core.notices)
        sends = "would make" if summary["dry_run"] or summary["state"] == RunState.REFUSED else "makes"
        lines += ["", f"This run {sends} Mailman send its own notices to list owners (the list's "
                  "`admin_notify_mchanges` is on): " + ", ".join(f"{item['owner_notices']:,} to the owners of "
                                                                   f"{md(item['list_id'])}" for item in noticed) + "."]
    for item in summary["lists"]:
        if item["reasons"] or item["left_alone"]:
            lines += ["", f"## {md(item['list_id'])}", "", "| action | reason | count |", "|---|---|---:|"]
            for action, reasons in item["reasons"].items():
                lines += [f"| {action} | {md(reason)} | {n:,} |" for reason, n in reasons.items()]
            lines += [f"| left alone | {md(reason)} | {n:,} |" for reason, n in item["left_alone"].items()]
    for item in summary["lists"]:
        if item.get("banned_members"):
            lines += ["", f"## {md(item['list_id'])}: eligible in Novi, banned in Mailman ({item['banned']:,})", "",
                      "Not subscribed while the ban stands; lift it in Mailman if it is no longer meant.", "",
                      "| address | Novi id |", "|---|---|"]
            lines += [f"| {md(m['email'])} | {md(m['novi_id'])} |" for m in item["banned_members"]]
            if item["banned"] > len(item["banned_members"]):
                lines += ["", f"The first {len(item['banned_members'])} are shown; all are in the plan CSV."]
    if summary.get("bouncing"):
        lines += ["", "## Novi addresses that bounce (correct them in Novi)", "", "| Mailman | records |", "|---|---:|"]
        lines += [f"| {md(state)} | {n:,} |" for state, n in summary["bouncing"].items()]
        lines += ["", f"Each record, with its Novi id and list, is in the `{own(BOUNCING_KEY)}` artifact. The tool never "
                  "re-enables a bouncing address, and does not subscribe again one Mailman removed for bounces "
                  "until Novi holds another address for the person."]
    if summary["quarantine_reasons"]:
        lines += ["", "## Quarantined Novi records (fix them in Novi)", "", "| reason | count |", "|---|---:|"]
        lines += [f"| {md(reason)} | {n:,} |" for reason, n in summary["quarantine_reasons"].items()]
        lines += ["", f"Each record, with its Novi id, is in the `{own(QUARANTINE_KEY)}` artifact and the plan CSV."]
    lines += ["", "Every change and every row left alone, per list, failures and removals first: the "
              f"`{own(PLAN_KEY)}-<list>` tables of this run."]
    if summary["plan_csv"]:
        lines += ["", f"The same as one CSV, on the machine that ran this run: `{summary['plan_csv']}`."]
    lines += ["", "Why was someone removed? Run the `address-history/on-demand` deployment with their address (it "
              f"publishes the answer here), or `novi-mailman history ADDRESS` (ledger: `{summary['ledger']}`)."]
    return "\n".join(lines) + "\n"


def plan_rows(plan: Plan, outcomes: pd.DataFrame) -> pd.DataFrame:
    """Every change with its outcome, every row left alone, every quarantined record and every
    membership whose address bounces."""
    alone = plan.left_alone.assign(action=LEFT_ALONE, outcome="", detail=plan.left_alone["detail"].fillna(""))
    quarantined = pd.DataFrame({"list_id": "", "action": QUARANTINED, "email": plan.quarantined["email"],
                                "novi_id": plan.quarantined["novi_id"], "reason": plan.quarantined["quarantine"],
                                "outcome": "", "detail": ""})
    bouncing = plan.bouncing.rename(columns={"state": "reason"}).assign(action=BOUNCING, outcome="", detail="")
    parts = [p for p in (outcomes, alone, quarantined, bouncing) if not p.empty]
    if not parts:
        return pd.DataFrame(columns=PLAN_ROW_COLUMNS)
    return pd.concat(parts, ignore_index=True).reindex(columns=PLAN_ROW_COLUMNS)


def safe_file_name(run_name: str) -> str:
    """A run name (custom, or from a template: `/`, `..`, anything) as one plain file name."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", run_name).strip(".-")[:100]
    return name or "run"


def reports_folder(reports_dir: str | None) -> Path:
    """Where a run's reports go: `reports_dir`, else $NOVI_MAILMAN_REPORTS, else ./reports."""
    return Path(reports_dir or os.environ.get(REPORTS_DIR_ENV, "reports"))


def save_plan(rows: pd.DataFrame, reports_dir: str | None, run_name: str, run_id: str) -> tuple[str | None, str]:
    """The plan CSV written where the run's reports go (`reports_folder`): its path, or None and
    why not. The report never fails a run: Mailman may already hold its changes."""
    folder = reports_folder(reports_dir)
    try:
        return str(write_plan_csv(rows, folder, run_name, run_id)), ""
    except OSError as exc:
        get_run_logger().warning("The plan CSV could not be written: %s", type(exc).__name__)
        return None, f"the plan CSV could not be written to {folder}: {exc.strerror or type(exc).__name__}"


def write_plan_csv(rows: pd.DataFrame, reports_dir: Path, run_name: str, run_id: str) -> Path:
    """The full plan as `reports_dir/plan-<run name>-<run id's first 8>.csv`, always inside
    `reports_dir`: Prefect's names repeat (and a name given by hand may), the id does not."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    path = (reports_dir / f"plan-{safe_file_name(run_name)}-{safe_file_name(run_id)[:8]}.csv").resolve()
    if path.parent != reports_dir.resolve():  # unreachable after safe_file_name; kept as the promise
        raise OSError(f"plan file name escapes {reports_dir}")
    rows.to_csv(path, index=False)
    return path


def plan_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One list's plan rows (changes with their outcomes, then rows left alone) as the browser's
    table: failures first, then removals and holds, then the rest, rows left alone last; an
    address change as one row "old → new", a rename as "old name → new name"."""
    rows = rows.reset_index(drop=True).astype({c: "string" for c in PLAN_ROW_COLUMNS})
    gone = rows.index[(rows["action"] == Action.UNSUBSCRIBE) & (rows["reason"] == REASON_ADDRESS_CHANGED)
                      & rows["novi_id"].notna()]
    new = rows.loc[(rows["action"] == Action.SUBSCRIBE) & rows["novi_id"].notna()].drop_duplicates("novi_id")
    new_at = pd.Series(new.index, index=new["novi_id"])
    # One old address per new one: a second old address of the same person (an earlier removal
    # that failed) stays a row of its own, never hidden under the first.
    first_gone = rows.loc[gone].drop_duplicates("novi_id").index
    pairs = [(old, new_at[rows.at[old, "novi_id"]]) for old in first_gone if rows.at[old, "novi_id"] in new_at.index]
    table = pd.DataFrame({
        "action": rows["action"], "email": rows["email"], "outcome": rows["outcome"].fillna(""),
        "reason": rows["reason"], "change": "", "name": rows["display_name"], "novi_id": rows["novi_id"],
        "detail": rows["detail"].fillna("")}, columns=PLAN_TABLE_COLUMNS)
    renamed = rows["action"] == Action.RENAME
    table.loc[renamed, "change"] = rows.loc[renamed, "previous"].fillna("") + " → " + rows.loc[renamed, "display_name"]
    for old, moved in pairs:
        failed = (rows.loc[[old, moved], "outcome"] == Outcome.FAILED).any()
        table.loc[moved, ["action", "change", "reason"]] = [
            ADDRESS_CHANGE, f"{rows.at[old, 'email']} → {rows.at[moved, 'email']}", REASON_ADDRESS_CHANGED]
        table.at[moved, "outcome"] = Outcome.FAILED if failed else rows.at[moved, "outcome"]
        table.at[moved, "detail"] = "; ".join(rows.loc[[old, moved], "detail"].dropna().loc[lambda d: d != ""])
    table = table.drop(index=[old for old, _ in pairs])
    rank = pd.Series(3, index=table.index)
    rank[~table["action"].isin([*ACTIONS, ADDRESS_CHANGE])] = 4  # rows left alone, bouncing memberships
    rank[table["action"].isin([*REMOVING, ADDRESS_CHANGE])] = 1  # an address change removes the old address
    rank[table["outcome"] == Outcome.FAILED] = 0
    return table.assign(_rank=rank).sort_values(["_rank", "action", "email"], kind="stable") \
        .drop(columns="_rank").reset_index(drop=True)


def capped(table: pd.DataFrame, table_rows: int) -> tuple[pd.DataFrame, str]:
    """A list's plan table cut for the browser at `table_rows` rows, and what it holds. The cut
    never takes a failure, a removal, a hold or an address change (it removes the old address):
    those are always all there, then the other changes, then the rows left alone, as many as fit."""
    vital = (table["outcome"] == Outcome.FAILED) | table["action"].isin([*REMOVING, ADDRESS_CHANGE])
    changes = table["action"].isin([*ACTIONS, ADDRESS_CHANGE])
    kept = table.loc[vital | (~vital).cumsum().le(max(table_rows - int(vital.sum()), 0))]
    shown = changes.loc[kept.index]
    moved = int((table["action"] == ADDRESS_CHANGE).sum())
    note = (f"{int(shown.sum()):,} of {int(changes.sum()):,} changes (every failure, removal, hold and address "
            "change), "
            f"{int((~shown).sum()):,} of {int((~changes).sum()):,} other rows (left alone, bouncing)")
    if moved:  # the run's message counts both halves: "15 changes applied" beside 13 rows read as a gap
        note += (f"; {moved:,} address change{'s are' if moved > 1 else ' is'} one row for two changes (the old "
                 "address off, the new on), as the run's message counts them")
    return kept, note + ("" if len(kept) == len(table) else
                         f"; cut at {table_rows:,} rows for the browser, which draws every row at once "
                         f"({UI_TABLE_COST}); all are in the plan CSV")


def json_rows(frame: pd.DataFrame) -> list[dict]:
    """A frame as the rows a table artifact or a summary carries: plain JSON values."""
    return json.loads(frame.to_json(orient="records")) if not frame.empty else []


def publish_plan_tables(rows: pd.DataFrame, dry_run: bool, table_rows: int, refused: bool = False) -> None:
    """One table artifact per list: every change and every row left alone (see `capped`)."""
    for list_id, mine in rows.loc[rows["list_id"] != ""].groupby("list_id", sort=True):
        kept, note = capped(plan_table(mine), table_rows)
        create_table_artifact(json_rows(kept) or [dict.fromkeys(PLAN_TABLE_COLUMNS, "")],
                              key=artifact_key(PLAN_KEY, dry_run, list_id, refused),
                              description=f"{list_id}: {'refused, not written: ' * refused}{note}")


def publish(summary: RunSummary, rows: pd.DataFrame, table_rows: int, quarantined: pd.DataFrame | None = None,
            bouncing: pd.DataFrame | None = None) -> None:
    """Keyed artifacts: the summary, each list's plan table, and, for membership staff to fix in
    Novi, the quarantined records with their reasons and the records whose address bounces.
    A Prefect API that refuses one is said in the summary's message and logged, never raised:
    Mailman may already hold the run's changes."""
    try:
        _publish(summary, rows, table_rows, quarantined, bouncing)
    except (httpx.HTTPError, ValueError) as exc:
        note(summary, f"the run's artifacts could not be published: {type(exc).__name__}")
        get_run_logger().error("The run's artifacts could not be published: %s", type(exc).__name__)


def _publish(summary: RunSummary, rows: pd.DataFrame, table_rows: int, quarantined: pd.DataFrame | None,
             bouncing: pd.DataFrame | None) -> None:
    dry_run, refused = summary["dry_run"], summary["state"] == RunState.REFUSED
    create_markdown_artifact(summary_markdown(summary), key=artifact_key(SUMMARY_KEY, dry_run, refused=refused),
                             description=f"novi-mailman {'dry run' if dry_run else 'run'}: {summary['message']}"[:500])
    publish_plan_tables(rows, dry_run, table_rows, refused)
    if quarantined is not None and not quarantined.empty:
        shown = quarantined.head(table_rows).rename(columns={"quarantine": "reason"})[["novi_id", "email", "reason"]]
        create_table_artifact(json_rows(shown), key=artifact_key(QUARANTINE_KEY, dry_run, refused=refused),
                              description=f"{len(quarantined):,} Novi records not synced until fixed in Novi"
                              + (f" (first {table_rows:,} shown; all are in the plan CSV)"
                                 if len(quarantined) > table_rows else ""))
    if bouncing is not None and not bouncing.empty:
        shown = bouncing.sort_values(["novi_id", "list_id"], kind="stable").head(table_rows)
        create_table_artifact(json_rows(shown[["novi_id", "display_name", "email", "list_id", "state"]]),
                              key=artifact_key(BOUNCING_KEY, dry_run, refused=refused),
                              description=f"{len(bouncing):,} memberships whose address bounces: correct the "
                              "address in Novi" + (f" (first {table_rows:,} shown; all are in the plan CSV)"
                                                   if len(bouncing) > table_rows else ""))


def member_markdown(summary: dict, outcomes: pd.DataFrame) -> str:
    """A member run's summary: the members, who Novi did not know, and every change (they are few)."""
    lines = [f"# Member sync: {summary['state']}", "", f"**{md(summary['message'])}**", "",
             f"Members: {len(summary['members'])} · not found in Novi (left to the full sync): "
             f"{md(', '.join(summary['not_found'])) or 'none'}", ""]
    if summary.get("guards_overridden"):
        lines += ["**Guards were lifted for this run by the operator:** " + " ".join(summary["guards"]), ""]
    lines += ["| list | action | email | reason | outcome |", "|---|---|---|---|---|"]
    lines += [f"| {md(r.list_id)} | {r.action} | {md(r.email)} | {md(r.reason)} | {md(r.outcome)} |"
              for r in outcomes.itertuples()]
    return "\n".join(lines) + "\n"


def publish_member(summary: dict, outcomes: pd.DataFrame) -> None:
    create_markdown_artifact(member_markdown(summary, outcomes), key=MEMBER_SUMMARY_KEY,
                             description=summary["message"][:200])


UNDO_TABLE_COLUMNS = ["list_id", "action", "email", "display_name", "outcome", "reason"]


def undo_summary(undoes: str, state: str, message: str, *, dry_run: bool, outcomes: pd.DataFrame | None = None,
                 skipped: pd.DataFrame | None = None, guards: list[str] | None = None,
                 ledger: str | None = None) -> UndoSummary:
    """An undo as one plain dict (the `UndoSummary` contract); with nothing to undo, only what it was asked."""
    summary: UndoSummary = {"state": state, "message": message, "dry_run": dry_run, "undoes": undoes,
                            "changes": json_rows(outcomes) if outcomes is not None else [],
                            "skipped": json_rows(skipped) if skipped is not None else []}
    if ledger is not None:
        summary.update(guards=guards or [], ledger=ledger)
    return summary


def publish_undo(summary: UndoSummary) -> None:
    """An undo's summary and its changes and skipped rows, as keyed artifacts."""
    dry_run = summary["dry_run"]
    lines = [f"# {'Dry run: u' if dry_run else 'U'}ndo of {md(summary['undoes'])}", "", f"**{md(summary['message'])}**",
             ""]
    if summary["guards"]:
        lines += ["Guards: " + " ".join(summary["guards"]), ""]
    if summary["skipped"]:
        lines += ["## Changed since, left as they are", "", "| list | email | would | why |", "|---|---|---|---|"]
        lines += [f"| {md(s['list_id'])} | {md(s['email'])} | {s['action']} | {md(s['reason'])} |"
                  for s in summary["skipped"]]
    create_markdown_artifact("\n".join(lines) + "\n", key=artifact_key(UNDO_KEY, dry_run),
                             description=summary["message"][:500])
    rows = [{c: change.get(c) or "" for c in UNDO_TABLE_COLUMNS} for change in summary["changes"]]
    create_table_artifact(rows or [dict.fromkeys(UNDO_TABLE_COLUMNS, "")],
                          key=artifact_key(UNDO_KEY + "-changes", dry_run),
                          description=f"Undo of {summary['undoes']}: every change, with its outcome")
