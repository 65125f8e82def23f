"""What a run did and why: the summary dict, the markdown summaries (full and member runs), the
changes table and the plan CSV."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from tasks.core.planner import REASON_BANNED, Plan
from tasks.core.schema import ACTIONS, BOUNCING, LEFT_ALONE, PLAN_ROW_COLUMNS, QUARANTINED, Outcome, RunState

SUMMARY_KEY = "novi-mailman-summary"
MEMBER_SUMMARY_KEY = "novi-mailman-member-sync"
LISTED = 100  # rows of one kind a summary names one by one; all are in the plan CSV
CHANGES_KEY = "novi-mailman-changes"
PLAN_KEY = "novi-mailman-plan"
QUARANTINE_KEY = "novi-mailman-quarantine"
BOUNCING_KEY = "novi-mailman-bouncing"


def _counts(series: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in series.value_counts().sort_index().items()}


def summarise(plan: Plan, outcomes: pd.DataFrame, *, dry_run: bool, state: str, message: str,
              novi_members: int, duration_s: float, plan_csv: str | None, ledger: str,
              guards: list[str] | None = None, guards_overridden: bool = False) -> dict:
    """The run as one plain dict: what the flow returns and `--json` prints."""
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
            # duplicates name the record kept; count them as one reason
            "left_alone": _counts(alone["reason"].str.replace(r"^duplicate address: .*$", "duplicate address",
                                                              regex=True)),
            # for the list owner: eligible members Mailman bans, who will not receive the list
            "banned_members": alone.loc[alone["reason"] == REASON_BANNED, ["email", "novi_id"]].head(LISTED)
            .astype(object).where(lambda f: f.notna(), None).to_dict("records"),
        })
    return {
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
    }


def summary_markdown(summary: dict) -> str:
    """The run's summary for an analyst: per list, counts by action, outcome and reason."""
    if summary["dry_run"]:
        mode = "Dry run: nothing was written."
    elif summary["state"] == RunState.REFUSED:
        mode = "Refused by a safety guard: nothing was written. The tables show what would have happened."
    else:
        mode = "Changes were applied to Mailman."
    if summary.get("guards_overridden"):
        mode += " **Guards were lifted for this run by the operator:** " + " ".join(summary["guards"])
    lines = [f"# Novi → Mailman sync: {summary['state']}", "", f"**{summary['message']}**", "", mode, "",
             f"Novi members read: {summary['novi_members']:,} · quarantined: {summary['quarantined']:,} · "
             f"duration: {summary['duration_s']} s", ""]
    lines += ["| list | eligible | on roster | managed | in step | " + " | ".join(ACTIONS) + " | failed |",
              "|---|---:|---:|---:|---:|" + "---:|" * len(ACTIONS) + "---:|"]
    for item in summary["lists"]:
        lines.append(f"| {item['list_id']} | {item['eligible']:,} | {item['roster']:,} | {item['managed']:,} | "
                     f"{item['in_step']:,} | " + " | ".join(f"{item['changes'][a]:,}" for a in ACTIONS)
                     + f" | {item['outcomes'].get(Outcome.FAILED, 0):,} |")
    for item in summary["lists"]:
        if item["reasons"] or item["left_alone"]:
            lines += ["", f"## {item['list_id']}", "", "| action | reason | count |", "|---|---|---:|"]
            for action, reasons in item["reasons"].items():
                lines += [f"| {action} | {reason} | {n:,} |" for reason, n in reasons.items()]
            lines += [f"| left alone | {reason} | {n:,} |" for reason, n in item["left_alone"].items()]
    for item in summary["lists"]:
        if item.get("banned_members"):
            lines += ["", f"## {item['list_id']}: eligible in Novi, banned in Mailman ({item['banned']:,})", "",
                      "Not subscribed while the ban stands; lift it in Mailman if it is no longer meant.", "",
                      "| address | Novi id |", "|---|---|"]
            lines += [f"| {m['email']} | {m['novi_id']} |" for m in item["banned_members"]]
            if item["banned"] > len(item["banned_members"]):
                lines += ["", f"The first {len(item['banned_members'])} are shown; all are in the plan CSV."]
    if summary.get("bouncing"):
        lines += ["", "## Novi addresses that bounce (correct them in Novi)", "", "| Mailman | records |", "|---|---:|"]
        lines += [f"| {state} | {n:,} |" for state, n in summary["bouncing"].items()]
        lines += ["", f"Each record, with its Novi id and list, is in the `{BOUNCING_KEY}` artifact. The tool never "
                  "re-enables a bouncing address, and does not subscribe again one Mailman removed for bounces "
                  "until Novi holds another address for the person."]
    if summary["quarantine_reasons"]:
        lines += ["", "## Quarantined Novi records (fix them in Novi)", "", "| reason | count |", "|---|---:|"]
        lines += [f"| {reason} | {n:,} |" for reason, n in summary["quarantine_reasons"].items()]
        lines += ["", f"Each record, with its Novi id, is in the `{QUARANTINE_KEY}` artifact and the plan CSV."]
    if summary["plan_csv"]:
        lines += ["", f"The full plan, one row per change and per row left alone: `{summary['plan_csv']}`"
                  f" (also linked as the `{PLAN_KEY}` artifact)."]
    lines += ["", f"What happened to one address across lists and runs: `novi-mailman history ADDRESS` "
              f"(ledger: `{summary['ledger']}`)."]
    return "\n".join(lines) + "\n"


def plan_rows(plan: Plan, outcomes: pd.DataFrame) -> pd.DataFrame:
    """Every change with its outcome, every row left alone, every quarantined record and every
    membership whose address bounces."""
    alone = plan.left_alone.assign(action=LEFT_ALONE, outcome="", detail="")
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


def write_plan_csv(rows: pd.DataFrame, reports_dir: Path, run_name: str) -> Path:
    """The full plan as `reports_dir/plan-<run name>.csv`, always inside `reports_dir`."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    path = (reports_dir / f"plan-{safe_file_name(run_name)}.csv").resolve()
    if path.parent != reports_dir.resolve():  # unreachable after safe_file_name; kept as the promise
        raise OSError(f"plan file name escapes {reports_dir}")
    rows.to_csv(path, index=False)
    return path


def publish(summary: dict, outcomes: pd.DataFrame, plan_csv: Path | None, table_rows: int,
            quarantined: pd.DataFrame | None = None, bouncing: pd.DataFrame | None = None) -> None:
    """Keyed artifacts: the summary, a capped table of changes, a link to the full plan, and, for
    membership staff to fix in Novi, the quarantined records with their reasons and the records
    whose address bounces."""
    create_markdown_artifact(summary_markdown(summary), key=SUMMARY_KEY,
                             description=f"novi-mailman run summary: {summary['message']}")
    shown = outcomes.head(table_rows)
    table = json.loads(shown[["list_id", "action", "email", "reason", "outcome", "detail"]]
                       .to_json(orient="records", date_format="iso"))
    capped = len(outcomes) > table_rows
    note = (f"first {table_rows:,} of {len(outcomes):,} changes; the full plan is the CSV"
            if capped else f"all {len(outcomes):,} changes")
    create_table_artifact(table or [{"list_id": "", "action": "no changes", "email": "", "reason": "",
                                     "outcome": "", "detail": ""}], key=CHANGES_KEY, description=note)
    if quarantined is not None and not quarantined.empty:
        rows = quarantined.head(table_rows).rename(columns={"quarantine": "reason"})[["novi_id", "email", "reason"]]
        create_table_artifact(json.loads(rows.to_json(orient="records")), key=QUARANTINE_KEY,
                              description=f"{len(quarantined):,} Novi records not synced until fixed in Novi"
                              + (f" (first {table_rows:,} shown; all are in the plan CSV)"
                                 if len(quarantined) > table_rows else ""))
    if bouncing is not None and not bouncing.empty:
        rows = bouncing.sort_values(["novi_id", "list_id"], kind="stable").head(table_rows)
        create_table_artifact(json.loads(rows[["novi_id", "display_name", "email", "list_id", "state"]]
                                         .to_json(orient="records")), key=BOUNCING_KEY,
                              description=f"{len(bouncing):,} memberships whose address bounces: correct the "
                              "address in Novi" + (f" (first {table_rows:,} shown; all are in the plan CSV)"
                                                   if len(bouncing) > table_rows else ""))
    if plan_csv is not None:
        create_link_artifact(plan_csv.as_uri(), link_text=plan_csv.name, key=PLAN_KEY,
                             description="the full plan as CSV (changes, rows left alone, quarantined records)")


def member_markdown(summary: dict, outcomes: pd.DataFrame) -> str:
    """A member run's summary: the members, who Novi did not know, and every change (they are few)."""
    lines = [f"# Member sync: {summary['state']}", "", f"**{summary['message']}**", "",
             f"Members: {len(summary['members'])} · not found in Novi (left to the full sync): "
             f"{', '.join(summary['not_found']) or 'none'}", ""]
    if summary.get("guards_overridden"):
        lines += ["**Guards were lifted for this run by the operator:** " + " ".join(summary["guards"]), ""]
    lines += ["| list | action | email | reason | outcome |", "|---|---|---|---|---|"]
    lines += [f"| {r.list_id} | {r.action} | {r.email} | {r.reason} | {r.outcome} |" for r in outcomes.itertuples()]
    return "\n".join(lines) + "\n"


def publish_member(summary: dict, outcomes: pd.DataFrame) -> None:
    create_markdown_artifact(member_markdown(summary, outcomes), key=MEMBER_SUMMARY_KEY,
                             description=summary["message"][:200])
