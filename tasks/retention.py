"""What the tool keeps outside the ledger, kept no longer than needed: the plan CSVs in the
reports folder and the runs' artifacts on the Prefect server (README: Privacy).

Two jobs on both: remove what is older than `ledger.keep_history_days` (after each real full
run, and `novi-mailman ledger prune`), and erase one person (`novi-mailman ledger forget`):
rows that name them go from the CSVs and the table artifacts, their address and Novi id from
the markdown ones, and the history runs asked about them are deleted.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from uuid import UUID

import httpx

OURS = "novi-mailman-"          # every artifact key of this tool starts so (tasks.report, tasks.history)
PLAN_FILES = "plan-*.csv"       # tasks.report.write_plan_csv
ERASED = "(erased)"
PAGE = 200


@dataclass
class Erased:
    """What erasing one person from the reports and the Prefect server did, and did not reach."""

    csv_files: int = 0        # plan CSVs rewritten without their rows
    csv_rows: int = 0
    artifacts: int = 0        # artifacts rewritten (rows dropped, or the address and id blanked)
    flow_runs: int = 0        # history runs named after the address, deleted with their logs
    logs_naming: list[str] = field(default_factory=list)  # flow runs whose logs still name them
    logs_unsearched: str | None = None  # why the logs could not be searched, when they could not


def old_plan_files(reports_dir: Path, before: datetime) -> int:
    """Delete the plan CSVs in `reports_dir` last written before `before`; how many."""
    removed = 0
    for path in reports_dir.glob(PLAN_FILES) if reports_dir.is_dir() else ():
        if path.stat().st_mtime < before.timestamp():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def erase_from_plan_files(reports_dir: Path, needles: Sequence[str], erased: Erased) -> None:
    """Rewrite each plan CSV that names the person without the rows that do."""
    for path in reports_dir.glob(PLAN_FILES) if reports_dir.is_dir() else ():
        text = path.read_text(encoding="utf-8")
        if not _names(text, needles):
            continue
        rows = list(csv.reader(io.StringIO(text)))
        kept = rows[:1] + [row for row in rows[1:] if not any(_names(cell, needles) for cell in row)]
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(kept)
        path.write_text(out.getvalue(), encoding="utf-8")
        erased.csv_files += 1
        erased.csv_rows += len(rows) - len(kept)


def old_artifacts(client, before: datetime, deployment_id: UUID | None | bool = True) -> int:
    """Delete this tool's artifacts of flow runs started before `before`; how many. Only those of
    one deployment's runs (`deployment_id`; None: runs started outside any deployment, as from
    the command line), or of every run (`True`)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId, FlowRunFilterStartTime

    runs = FlowRunFilter(start_time=FlowRunFilterStartTime(before_=before))
    if deployment_id is not True:
        runs.deployment_id = (FlowRunFilterDeploymentId(is_null_=True) if deployment_id is None
                              else FlowRunFilterDeploymentId(any_=[deployment_id]))
    doomed = [artifact.id for artifact in _ours(client, flow_run_filter=runs)]
    for artifact_id in doomed:
        _delete(client, artifact_id)
    return len(doomed)


def erase_from_prefect(client, address: str, novi_ids: Sequence[str], erased: Erased) -> None:
    """Erase one person from this tool's artifacts and runs on the Prefect server."""
    from prefect.client.schemas.actions import ArtifactUpdate
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, LogFilter, LogFilterTextSearch

    needles = [address, *novi_ids]
    # The history runs asked about them: named after the address (flows.history.asked_name).
    asked = [run for run in client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=address)))
             if _names(run.name, [address])]
    for run in asked:
        for artifact in _ours(client, flow_run_filter=FlowRunFilter(id={"any_": [run.id]})):
            _delete(client, artifact.id)
        client.delete_flow_run(run.id)  # Prefect deletes its logs with it
        erased.flow_runs += 1
    for artifact in _ours(client):
        data = artifact.data if isinstance(artifact.data, str) else json.dumps(artifact.data)
        description = artifact.description or ""
        if not _names(data, needles) and not _names(description, needles):
            continue
        client.update_artifact(artifact.id, ArtifactUpdate(data=_erased(artifact.type, data, needles),
                                                           description=blank(description, needles)))
        erased.artifacts += 1
    try:  # what Prefect cannot edit: a log line; none of this tool's names an address, said if one does
        logs = client.read_logs(log_filter=LogFilter(text=LogFilterTextSearch(query=f'"{address}"')), limit=PAGE)
    except httpx.HTTPStatusError as exc:  # a server without log search: said, the erasure above stands
        logs, erased.logs_unsearched = [], f"the Prefect server refused the log search ({exc.response.status_code})"
    erased.logs_naming = sorted({str(log.flow_run_id) for log in logs if _names(log.message, [address])})


def _ours(client, **filters) -> Iterator:
    """This tool's artifacts (every version of every key), page by page, read whole first so
    that deleting or rewriting them does not move the pages."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    found, offset = [], 0
    while True:
        page = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=OURS)),
                                     sort=ArtifactSort.ID_DESC, limit=PAGE, offset=offset, **filters)
        found += [artifact for artifact in page if (artifact.key or "").startswith(OURS)]
        if len(page) < PAGE:
            return iter(found)
        offset += PAGE


def _delete(client, artifact_id: UUID) -> None:
    from prefect.exceptions import ObjectNotFound

    try:
        client.delete_artifact(artifact_id)
    except ObjectNotFound:  # gone meanwhile (another run's retention)
        pass


def _erased(kind: str | None, data: str, needles: Sequence[str]) -> str:
    """A table without the rows that name the person (one empty row if none is left: the UI
    shows an empty table); any other artifact with their address and Novi id blanked."""
    if kind == "table":
        try:
            rows = json.loads(data)
        except ValueError:
            rows = None
        if isinstance(rows, list):
            kept = [row for row in rows if not _names(json.dumps(row, ensure_ascii=False), needles)]
            return json.dumps(kept or [dict.fromkeys(rows[0] if rows and isinstance(rows[0], dict) else [], "")])
    return blank(data, needles)


def _names(text: str | None, needles: Sequence[str]) -> bool:
    folded = (text or "").casefold()
    return any(needle and needle.casefold() in folded for needle in needles)


def blank(text: str, needles: Sequence[str]) -> str:
    """The text with each needle replaced by ERASED, whatever its case."""
    for needle in needles:
        if needle:
            text = re.sub(re.escape(needle), ERASED, text, flags=re.IGNORECASE)
    return text
