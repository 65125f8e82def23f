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
# The ledger as the planner reads it (tasks.ledger stores exactly these columns), and the
# next ledger state the plan implies; `pending` names the change the row's existence waits on.
LEDGER_COLUMNS = ["list_id", "match_key", "email", "novi_id", "status", "how", "on_roster", "eligible",
                  "first_managed_at", "last_seen_on_roster_at", "last_eligible_at", "left_at", "left_expires"]
MEMORY_COLUMNS = [*LEDGER_COLUMNS, "pending"]
TIMESTAMP_COLUMNS = ["first_managed_at", "last_seen_on_roster_at", "last_eligible_at", "left_at", "left_expires"]
LEFT_ALONE_COLUMNS = ["list_id", "email", "novi_id", "reason"]
# `remembered`: members the ledger saw on the list at its last run; `vanished`: those of them
# the roster no longer holds (what the roster-collapse guard reads).
FIGURE_COLUMNS = ["list_id", "eligible", "roster", "managed", "in_step", "quarantined_on_roster", "duplicates",
                  "remembered", "vanished"]
ACTIONS = ["subscribe", "unsubscribe", "hold", "release", "rename"]

REASON_SUBSCRIBE = "eligible, not on the list"
REASON_RELEASE = "eligible again, delivery was held"
REASON_RENAME = "name changed in Novi"
REASON_NOT_IN_NOVI = "not in Novi"
REASON_UNMANAGED = "unmanaged: not in Novi"
REASON_PROTECTED = "protected address"
REASON_ADDRESS_CHANGED = "address changed in Novi"
REASON_GONE = "no longer in Novi"
REASON_LEFT = "left the list themselves"


@dataclass(frozen=True)
class Plan:
    """What a run would do: `changes` to apply, rows `left_alone` with their reason, per-list figures."""

    changes: pd.DataFrame
    left_alone: pd.DataFrame
    figures: pd.DataFrame
    quarantined: pd.DataFrame
    memory: pd.DataFrame  # the ledger after this plan, if every change succeeds (see settle)

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


def empty_ledger() -> pd.DataFrame:
    """A ledger with no rows: the first run, or a dry run with no ledger yet."""
    frame = pd.DataFrame({c: pd.Series(dtype="string") for c in LEDGER_COLUMNS})
    for c in TIMESTAMP_COLUMNS:
        frame[c] = pd.Series(dtype="datetime64[ns, UTC]")
    frame["on_roster"] = frame["on_roster"].astype(bool)
    frame["eligible"] = frame["eligible"].astype(bool)
    return frame


def _flag(frame: pd.DataFrame, column: str) -> pd.Series:
    return frame[column].fillna(False).astype(bool)


def plan_list(usable: pd.DataFrame, roster: pd.DataFrame, ledger: pd.DataFrame, rule: ListRule,
              quarantined: pd.DataFrame, now: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Changes, rows left alone, next ledger rows and figures for one list (see `plan`)."""
    list_id = rule.list_id
    members = usable.assign(why_not=ineligibility(usable, rule))
    members["eligible"] = members["why_not"] == ""

    # One Novi record per address: the eligible one wins, then the smallest id (deterministic).
    members = members.sort_values(["match_key", "eligible", "novi_id"], ascending=[True, False, True],
                                  kind="stable")
    duplicate = members["match_key"].duplicated(keep="first").to_numpy()
    winners = members.loc[~duplicate]
    dup_rows = members.loc[duplicate].merge(winners[["match_key", "novi_id"]], on="match_key", suffixes=("", "_kept"))
    duplicates = _frame(LEFT_ALONE_COLUMNS, list_id=list_id, email=dup_rows["email"], novi_id=dup_rows["novi_id"],
                        reason="duplicate address: Novi record " + dup_rows["novi_id_kept"] + " is used")

    side = winners[["match_key", "email", "novi_id", "display_name", "eligible", "why_not", "expires"]].assign(
        in_novi=True)
    on_list = roster[["match_key", "email", "display_name", "member_id", "held"]].assign(on_roster_now=True)
    remembered = ledger.drop(columns=["list_id"]).add_prefix("led_").rename(columns={"led_match_key": "match_key"})
    joined = (side.merge(on_list, on="match_key", how="outer", suffixes=("", "_roster"))
              .merge(remembered.assign(in_ledger=True), on="match_key", how="outer"))
    joined.index = pd.RangeIndex(len(joined))

    in_novi = _flag(joined, "in_novi")
    on_roster = _flag(joined, "on_roster_now")
    in_ledger = _flag(joined, "in_ledger")
    tracked = in_ledger & (joined["led_status"] == "member").fillna(False)
    was_left = in_ledger & (joined["led_status"] == "left").fillna(False)
    eligible = _flag(joined, "eligible") & in_novi
    held = _flag(joined, "held")
    owner = joined["novi_id"].fillna(joined["led_novi_id"])
    owner_in_novi = joined["led_novi_id"].isin(usable["novi_id"]).fillna(False)
    owner_quarantined = joined["led_novi_id"].isin(quarantined["novi_id"]).fillna(False)
    # An address only a quarantined record vouches for is never removed (nor is one the
    # ledger ties to a quarantined record): bad data must not cause a removal.
    quarantined_row = on_roster & ~in_novi & (joined["match_key"].isin(quarantined["match_key"]).fillna(False)
                                              | owner_quarantined)
    protected = joined["match_key"].isin(rule.protected) & on_roster
    managed = on_roster & ~quarantined_row & (in_novi | in_ledger | (rule.scope == "mirror"))
    address_changed = managed & ~in_novi & in_ledger & owner_in_novi

    # Someone who was on the list and eligible at the last run, is still eligible, and is now
    # missing though this tool did not remove them, left by themselves: they stay off.
    newly_left = ~on_roster & tracked & _flag(joined, "led_on_roster") & _flag(joined, "led_eligible") & eligible
    left_owners = pd.concat([joined.loc[newly_left, ["novi_id"]].assign(left_expires=joined.loc[newly_left, "expires"]),
                             joined.loc[was_left, ["led_novi_id"]].rename(columns={"led_novi_id": "novi_id"})
                             .assign(left_expires=joined.loc[was_left, "led_left_expires"])])
    left_until = left_owners.groupby("novi_id")["left_expires"].max() if not left_owners.empty else pd.Series(
        dtype="datetime64[ns, UTC]")
    blocked = eligible & ~on_roster & joined["novi_id"].isin(left_until.index).fillna(False)
    if rule.self_unsubscribe == "override":
        blocked &= False
    elif rule.self_unsubscribe == "until_renewal":
        renewed = joined["expires"] > joined["novi_id"].map(left_until)
        blocked &= ~renewed.fillna(False).astype(bool)

    changes: list[pd.DataFrame] = []

    def add(mask: pd.Series, action: str, reason, email_column: str = "email_roster") -> None:
        rows = joined.loc[mask]
        if not rows.empty:
            changes.append(_frame(
                CHANGE_COLUMNS, list_id=list_id, action=action, email=rows[email_column],
                reason=reason if isinstance(reason, str) else reason.loc[mask],
                novi_id=owner.loc[mask], display_name=rows["display_name"], member_id=rows["member_id"]))

    staying = eligible & on_roster
    # Holds are released only on lists whose rule holds lapsed members: elsewhere a hold was
    # set by a moderator, not by this tool.
    released = staying & held & (rule.lapsed == "hold")
    novi_name = joined["display_name"].fillna("")
    renamed = staying & rule.update_names & (novi_name != "") & (
        novi_name != joined["display_name_roster"].fillna(""))
    subscribed = eligible & ~on_roster & ~blocked
    add(subscribed, "subscribe", REASON_SUBSCRIBE, "email")
    add(released, "release", REASON_RELEASE)
    add(renamed, "rename", REASON_RENAME)

    # An old address of a member whose Novi record now carries another one goes, whatever the
    # lapse policy: the member is subscribed under the new address instead.
    add(address_changed & ~protected, "unsubscribe", REASON_ADDRESS_CHANGED)
    leaving = managed & ~eligible & ~protected & ~address_changed
    leave_reason = joined["why_not"].where(in_novi, pd.Series(
        np.where(in_ledger, REASON_GONE, REASON_NOT_IN_NOVI), index=joined.index, dtype="string"))
    unsubscribed = address_changed & ~protected
    if rule.lapsed == "unsubscribe":
        add(leaving, "unsubscribe", leave_reason)
        unsubscribed |= leaving
    elif rule.lapsed == "hold":
        add(leaving & ~held, "hold", leave_reason)

    alone_parts = [duplicates]

    def alone(mask: pd.Series, reason) -> None:
        rows = joined.loc[mask]
        if not rows.empty:
            alone_parts.append(_frame(LEFT_ALONE_COLUMNS, list_id=list_id,
                                      email=rows["email_roster"].fillna(rows["email"]), novi_id=owner.loc[mask],
                                      reason=reason if isinstance(reason, str) else reason.loc[mask]))

    alone(on_roster & ~in_novi & ~in_ledger & ~quarantined_row & (rule.scope == "managed"), "unmanaged: not in Novi")
    alone(managed & ~eligible & protected, REASON_PROTECTED)
    alone(blocked, REASON_LEFT)
    if rule.lapsed == "keep":
        alone(leaving, "kept (lapsed: keep): " + leave_reason)
    elif rule.lapsed == "hold":
        alone(leaving & held, "already held: " + leave_reason)
    q = joined.loc[quarantined_row, ["match_key", "led_novi_id"]]
    if not q.empty:
        why = q.merge(quarantined, on="match_key", how="left")["quarantine"].to_numpy()
        by_owner = q["led_novi_id"].map(quarantined.drop_duplicates("novi_id").set_index("novi_id")["quarantine"])
        reason = pd.Series(why, index=q.index, dtype="string").fillna(by_owner.astype("string"))
        alone_parts.append(_frame(LEFT_ALONE_COLUMNS, list_id=list_id, email=joined.loc[q.index, "email_roster"],
                                  novi_id=q["led_novi_id"].fillna(pd.NA),
                                  reason="quarantined in Novi: " + reason.fillna("unknown")))

    memory = _memory(joined, list_id, now, subscribed=subscribed, unsubscribed=unsubscribed,
                     keep_member=on_roster & (in_novi | in_ledger),
                     newly_left=newly_left, still_left=was_left & ~on_roster & ~subscribed
                     & (owner_in_novi | owner_quarantined), eligible=eligible, owner=owner)
    figures = {
        "list_id": list_id,
        "eligible": int(eligible.sum()),
        "roster": int(on_roster.sum()),
        "managed": int(managed.sum()),
        "in_step": int((staying & ~released & ~renamed).sum()),
        "quarantined_on_roster": int(quarantined_row.sum()),
        "duplicates": len(duplicates),
        "remembered": int((tracked & _flag(joined, "led_on_roster")).sum()),
        "vanished": int((tracked & _flag(joined, "led_on_roster") & ~on_roster).sum()),
    }
    return (_concat(changes, CHANGE_COLUMNS), _concat(alone_parts, LEFT_ALONE_COLUMNS), memory, figures)


def _memory(joined: pd.DataFrame, list_id: str, now: pd.Timestamp, *, subscribed, unsubscribed, keep_member,
            newly_left, still_left, eligible, owner) -> pd.DataFrame:
    """The list's ledger rows after this plan, if every change succeeds.

    Members: addresses subscribed now, and roster addresses that Novi or the ledger ties to a
    member (adopted on first sight, without any write to Mailman). Left: members who left by
    themselves, remembered while their Novi record exists. Everything else is forgotten.
    """
    member = subscribed | keep_member
    left = (newly_left | still_left) & ~member
    rows = joined.loc[member | left]
    is_member = member.loc[rows.index]
    is_eligible = eligible.loc[rows.index]
    pending = np.where(subscribed.loc[rows.index], "subscribe", np.where(unsubscribed.loc[rows.index], "unsubscribe", ""))
    led_how = rows["led_how"]
    how = led_how.where(led_how.notna(), pd.Series(np.where(subscribed.loc[rows.index], "subscribed", "adopted"),
                                                   index=rows.index, dtype="string"))
    frame = pd.DataFrame({
        "list_id": list_id,
        "match_key": rows["match_key"],
        "email": rows["email_roster"].fillna(rows["email"]).fillna(rows["led_email"]),
        "novi_id": owner.loc[rows.index],
        "status": np.where(is_member, "member", "left"),
        "how": how,
        "on_roster": is_member.to_numpy(dtype=bool),
        "eligible": is_eligible.to_numpy(dtype=bool),
        "first_managed_at": rows["led_first_managed_at"].fillna(now),
        "last_seen_on_roster_at": rows["led_last_seen_on_roster_at"].where(~is_member, now),
        "last_eligible_at": rows["led_last_eligible_at"].where(~is_eligible, now),
        "left_at": rows["led_left_at"].where(~newly_left.loc[rows.index], now).where(~is_member, pd.NaT),
        "left_expires": rows["led_left_expires"].where(~newly_left.loc[rows.index], rows["expires"])
                        .where(~is_member, pd.NaT),
        "pending": pending,
    }, index=rows.index)
    for column in ["list_id", "match_key", "email", "novi_id", "status", "how", "pending"]:
        frame[column] = frame[column].astype("string")
    for column in TIMESTAMP_COLUMNS:
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame[MEMORY_COLUMNS].reset_index(drop=True)


def settle(memory: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    """The ledger rows to store once the changes ran: a subscribe that did not take is not a
    member, a removal that failed still is. Outcomes carry `list_id`, `action`, `email`, `outcome`."""
    done = outcomes.loc[outcomes["outcome"].isin(["applied", "already so"])]
    took = (done[["list_id", "action"]].rename(columns={"action": "pending"})
            .assign(match_key=done["email"].str.casefold(), took=True).drop_duplicates())
    merged = memory.merge(took, on=["list_id", "pending", "match_key"], how="left")
    took = merged["took"].fillna(False).astype(bool).to_numpy()
    pending = memory["pending"].fillna("").to_numpy()
    keep = (pending == "") | ((pending == "subscribe") & took) | ((pending == "unsubscribe") & ~took)
    return memory.loc[keep, LEDGER_COLUMNS].reset_index(drop=True)


def _concat(parts: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    parts = [p for p in parts if not p.empty]
    if not parts:
        return _frame(columns)
    return pd.concat(parts, ignore_index=True)[columns]


def plan(members: pd.DataFrame, rosters: Mapping[str, pd.DataFrame], rules: Rules,
         ledger: pd.DataFrame | None = None, now: pd.Timestamp | None = None) -> Plan:
    """Compare who should be on each list (its rule) with who is, for every list in the rules.

    `members` is the normalised members frame (tasks.novi.members_frame); `rosters` maps each
    dot-form list id to its roster frame (tasks.mailman); `ledger` is what earlier runs
    remember (tasks.ledger; none on a first run). Quarantined records are never subscribed,
    and an address on a roster that only a quarantined record knows is left alone.
    """
    ledger = empty_ledger() if ledger is None else ledger
    now = now if now is not None else pd.Timestamp.now(tz="UTC")
    is_quarantined = members["quarantine"].notna()
    usable = members.loc[~is_quarantined & members["match_key"].notna()]
    quarantined = members.loc[is_quarantined, ["novi_id", "email", "match_key", "quarantine"]]

    parts: dict[str, list] = {"changes": [], "alone": [], "memory": [], "figures": []}
    for rule in rules.lists:
        changes, alone, memory, figure = plan_list(usable, rosters[rule.list_id],
                                                   ledger.loc[ledger["list_id"] == rule.list_id], rule,
                                                   quarantined, now)
        parts["changes"].append(changes)
        parts["alone"].append(alone)
        parts["memory"].append(memory)
        parts["figures"].append(figure)
    changes = _concat(parts["changes"], CHANGE_COLUMNS)
    changes["action"] = pd.Categorical(changes["action"], categories=ACTIONS)
    changes = changes.sort_values(["list_id", "action", "email"], kind="stable", ignore_index=True)
    changes["action"] = changes["action"].astype("string")
    memory = pd.concat(parts["memory"], ignore_index=True) if parts["memory"] else empty_ledger()
    return Plan(changes=changes, left_alone=_concat(parts["alone"], LEFT_ALONE_COLUMNS),
                figures=pd.DataFrame(parts["figures"], columns=FIGURE_COLUMNS),
                quarantined=quarantined.reset_index(drop=True), memory=memory)
