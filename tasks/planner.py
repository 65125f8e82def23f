"""The plan: members frame + rosters + rules → the changes to make, and why. Pure pandas.

No I/O and no Prefect here, so the full sync, a one-member sync and the benchmark all call
the same function, and tests run it in milliseconds. Every step is a whole-column operation:
planning a million Novi records against a million-address roster takes seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tasks.rules import ListRule, Rules

CHANGE_COLUMNS = ["list_id", "action", "email", "reason", "novi_id", "display_name", "member_id"]
LEFT_ALONE_COLUMNS = ["list_id", "email", "novi_id", "reason"]
FIGURE_COLUMNS = ["list_id", "eligible", "roster", "managed", "in_step", "quarantined_on_roster", "duplicates"]
ACTIONS = ["subscribe", "unsubscribe", "hold", "release", "rename"]

REASON_SUBSCRIBE = "eligible, not on the list"
REASON_RELEASE = "eligible again, delivery was held"
REASON_RENAME = "name changed in Novi"
REASON_NOT_IN_NOVI = "not in Novi"
REASON_UNMANAGED = "unmanaged: not in Novi"
REASON_PROTECTED = "protected address"


@dataclass(frozen=True)
class Plan:
    """What a run would do: `changes` to apply, rows `left_alone` with their reason, per-list figures."""

    changes: pd.DataFrame
    left_alone: pd.DataFrame
    figures: pd.DataFrame
    quarantined: pd.DataFrame

    def count(self, list_id: str | None = None) -> int:
        if list_id is None:
            return len(self.changes)
        return int((self.changes["list_id"] == list_id).sum())


def ineligibility(members: pd.DataFrame, rule: ListRule) -> pd.Series:
    """Why each member does not belong on the rule's list ('' where they do), first reason wins."""
    checks: list[tuple[np.ndarray, object]] = []
    if rule.active_only:
        checks.append((~members["active"].to_numpy(dtype=bool), "inactive in Novi"))
    status = members["status"].fillna("")
    checks.append(((~status.isin(rule.statuses)).to_numpy(dtype=bool),
                   ("status " + status.where(status != "", "missing")).to_numpy(dtype=object)))
    if rule.persons_only:
        checks.append((~members["is_person"].to_numpy(dtype=bool), "a company, not a person"))
    if rule.member_types:
        wanted = set(rule.member_types)
        has_type = (members["member_type"].str.casefold().isin(wanted)
                    | members["member_type_id"].isin(wanted))
        checks.append((~has_type.fillna(False).to_numpy(dtype=bool), "member type not on this list"))
    if rule.groups:
        checks.append((~_in_groups(members, set(rule.groups)), "in none of the list's groups"))
    if rule.exclude_opted_out:
        checks.append((members["opted_out"].to_numpy(dtype=bool), "opted out of email in Novi"))
    reason = np.select([c for c, _ in checks], [r for _, r in checks], default="")
    return pd.Series(reason, index=members.index, dtype="string")


def _in_groups(members: pd.DataFrame, wanted: set[str]) -> np.ndarray:
    """Whether each member is in at least one wanted group, matched by id or casefolded name."""
    hit = np.zeros(len(members), dtype=bool)
    for column, fold in (("group_ids", False), ("group_names", True)):
        exploded = members[column].explode()
        values = exploded.astype("string")
        if fold:
            values = values.str.casefold()
        found = values.isin(wanted).fillna(False).groupby(level=0).any()
        hit |= found.reindex(members.index, fill_value=False).to_numpy(dtype=bool)
    return hit


def _frame(columns: list[str], **data) -> pd.DataFrame:
    return pd.DataFrame({c: data.get(c, pd.Series(dtype="string")) for c in columns}, columns=columns)


def plan_list(members: pd.DataFrame, roster: pd.DataFrame, rule: ListRule,
              quarantined_keys: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The changes and left-alone rows for one list (see `plan`)."""
    list_id = rule.list_id
    usable = members.assign(why_not=ineligibility(members, rule))
    usable["eligible"] = usable["why_not"] == ""

    # One Novi record per address: the eligible one wins, then the smallest id (deterministic).
    usable = usable.sort_values(["match_key", "eligible", "novi_id"], ascending=[True, False, True],
                                kind="stable")
    duplicate = usable["match_key"].duplicated(keep="first").to_numpy()
    winners = usable.loc[~duplicate]
    losers = usable.loc[duplicate]
    dup_rows = losers.merge(winners[["match_key", "novi_id"]], on="match_key", suffixes=("", "_kept"))
    duplicates = _frame(LEFT_ALONE_COLUMNS, list_id=list_id, email=dup_rows["email"],
                        novi_id=dup_rows["novi_id"],
                        reason="duplicate address: Novi record " + dup_rows["novi_id_kept"] + " is used")

    side = winners[["match_key", "email", "novi_id", "display_name", "eligible", "why_not"]]
    joined = side.merge(roster[["match_key", "email", "display_name", "member_id", "held"]],
                        on="match_key", how="outer", suffixes=("", "_roster"), indicator=True)
    in_novi = joined["_merge"] != "right_only"
    on_roster = joined["_merge"] != "left_only"
    eligible = joined["eligible"].fillna(False).astype(bool) & in_novi
    held = joined["held"].fillna(False).astype(bool)
    protected = joined["match_key"].isin(rule.protected) & on_roster
    quarantined = on_roster & ~in_novi & joined["match_key"].isin(quarantined_keys["match_key"])
    managed = on_roster & (in_novi | (rule.scope == "mirror")) & ~quarantined

    changes: list[pd.DataFrame] = []

    def add(mask: pd.Series, action: str, reason, email_column: str = "email") -> None:
        rows = joined.loc[mask]
        if rows.empty:
            return
        changes.append(_frame(
            CHANGE_COLUMNS, list_id=list_id, action=action, email=rows[email_column],
            reason=reason if isinstance(reason, str) else reason.loc[mask],
            novi_id=rows["novi_id"], display_name=rows["display_name"], member_id=rows["member_id"]))

    staying = eligible & on_roster
    # Holds are released only on lists whose rule holds lapsed members: elsewhere a hold was
    # set by a moderator, not by this tool.
    released = staying & held & (rule.lapsed == "hold")
    novi_name = joined["display_name"].fillna("")
    renamed = staying & rule.update_names & (novi_name != "") & (
        novi_name != joined["display_name_roster"].fillna(""))
    add(eligible & ~on_roster, "subscribe", REASON_SUBSCRIBE)
    add(released, "release", REASON_RELEASE, "email_roster")
    add(renamed, "rename", REASON_RENAME, "email_roster")

    leaving = managed & ~eligible & ~protected
    leave_reason = joined["why_not"].where(in_novi, REASON_NOT_IN_NOVI).fillna(REASON_NOT_IN_NOVI)
    if rule.lapsed == "unsubscribe":
        add(leaving, "unsubscribe", leave_reason, "email_roster")
    elif rule.lapsed == "hold":
        add(leaving & ~held, "hold", leave_reason, "email_roster")

    alone_parts = [duplicates]

    def alone(mask: pd.Series, reason) -> None:
        rows = joined.loc[mask]
        if not rows.empty:
            alone_parts.append(_frame(LEFT_ALONE_COLUMNS, list_id=list_id, email=rows["email_roster"],
                                      novi_id=rows["novi_id"],
                                      reason=reason if isinstance(reason, str) else reason.loc[mask]))

    alone(on_roster & ~in_novi & ~quarantined & (rule.scope == "managed"), REASON_UNMANAGED)
    alone(managed & ~eligible & protected, REASON_PROTECTED)
    if rule.lapsed == "keep":
        alone(leaving, "kept (lapsed: keep): " + leave_reason)
    elif rule.lapsed == "hold":
        alone(leaving & held, "already held: " + leave_reason)
    q = joined.loc[quarantined, ["match_key"]].merge(quarantined_keys, on="match_key", how="left")
    q = q.drop_duplicates("match_key")
    if not q.empty:
        alone_parts.append(_frame(LEFT_ALONE_COLUMNS, list_id=list_id, email=q["match_key"],
                                  novi_id=q["novi_id"], reason="quarantined in Novi: " + q["quarantine"]))

    figures = {
        "list_id": list_id,
        "eligible": int(eligible.sum()),
        "roster": int(on_roster.sum()),
        "managed": int(managed.sum()),
        "in_step": int((staying & ~released & ~renamed).sum()),
        "quarantined_on_roster": int(quarantined.sum()),
        "duplicates": len(duplicates),
    }
    return (_concat(changes, CHANGE_COLUMNS), _concat(alone_parts, LEFT_ALONE_COLUMNS), figures)


def _concat(parts: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    parts = [p for p in parts if not p.empty]
    if not parts:
        return _frame(columns)
    return pd.concat(parts, ignore_index=True)[columns]


def plan(members: pd.DataFrame, rosters: Mapping[str, pd.DataFrame], rules: Rules) -> Plan:
    """Compare who should be on each list (its rule) with who is, for every list in the rules.

    `members` is the normalised members frame (tasks.novi.members_frame); `rosters` maps each
    dot-form list id to its roster frame (tasks.mailman). Quarantined records are never
    subscribed, and an address on a roster that only a quarantined record knows is left alone.
    """
    is_quarantined = members["quarantine"].notna()
    usable = members.loc[~is_quarantined & members["match_key"].notna()]
    quarantined = members.loc[is_quarantined, ["novi_id", "email", "match_key", "quarantine"]]
    quarantined_keys = quarantined.loc[quarantined["match_key"].notna(), ["match_key", "novi_id", "quarantine"]]

    all_changes, all_alone, figures = [], [], []
    for rule in rules.lists:
        changes, alone, figure = plan_list(usable, rosters[rule.list_id], rule, quarantined_keys)
        all_changes.append(changes)
        all_alone.append(alone)
        figures.append(figure)
    changes = _concat(all_changes, CHANGE_COLUMNS)
    changes["action"] = pd.Categorical(changes["action"], categories=ACTIONS)
    changes = changes.sort_values(["list_id", "action", "email"], kind="stable", ignore_index=True)
    changes["action"] = changes["action"].astype("string")
    return Plan(changes=changes, left_alone=_concat(all_alone, LEFT_ALONE_COLUMNS),
                figures=pd.DataFrame(figures, columns=FIGURE_COLUMNS),
                quarantined=quarantined.reset_index(drop=True))
