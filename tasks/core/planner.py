"""The plan: members frame + rosters + rules → the changes to make, and why. Pure pandas.

No I/O and no Prefect here, so the full sync, a one-member sync and the benchmark all call
the same function, and tests run it in milliseconds. Every step is a whole-column operation:
planning a million Novi records against a million-address roster takes seconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from tasks.core.addresses import banned
from tasks.core.eligibility import companies_of, judge, off_committees
from tasks.core.rules import ListRule, Rules
from tasks.core.schema import (
    CHANGE_COLUMNS,
    OWNER_MODERATOR,
    OWNER_SUBSCRIBER,
    FIGURE_COLUMNS,
    LAPSE_HOLD,
    LAPSE_KEEP,
    LAPSE_UNSUBSCRIBE,
    LEDGER_COLUMNS,
    LEFT_ALONE_COLUMNS,
    MEMORY_COLUMNS,
    PREFERENCE_COLUMNS,
    REGULAR,
    BOUNCING_COLUMNS,
    WANTING_COLUMNS,
    REQUEST_COLUMNS,
    SCOPE_MANAGED,
    SCOPE_MIRROR,
    SELF_OVERRIDE,
    SELF_UNTIL_RENEWAL,
    TIMESTAMP_COLUMNS,
    TOOK,
    ACTIONS,
    Action,
    Delivery,
    How,
    Status,
    empty_ledger,
    REASON_SUBSCRIBE,
    REASON_RELEASE,
    REASON_RENAME,
    REASON_NOT_IN_NOVI,
    REASON_UNMANAGED,
    REASON_PROTECTED,
    REASON_ADDRESS_CHANGED,
    REASON_GONE,
    REASON_LEFT,
    REASON_BANNED,
    REASON_DUPLICATE,
    REASON_MODERATOR,
    REASON_NOT_MODERATOR,
    REASON_MODERATOR_GONE,
    REASON_REQUEST,
    REASON_AWAITING,
    BOUNCE_DISABLED,
    BOUNCE_REMOVED,
    REASON_BOUNCED,
    REASON_STOPPED,
)

STOPPED_BY = {Delivery.BY_USER: "by the member", Delivery.BY_BOUNCES: "by bounces"}


@dataclass(frozen=True)
class Plan:
    """What a run would do: `changes` to apply, rows `left_alone` with their reason, per-list figures."""

    changes: pd.DataFrame
    left_alone: pd.DataFrame
    figures: pd.DataFrame
    quarantined: pd.DataFrame
    memory: pd.DataFrame  # the ledger after this plan, if every change succeeds (see settle)
    bouncing: pd.DataFrame  # Novi records whose address Mailman stopped or removed for bounces
    # Members whose preferences this plan needs and the roster did not bring (list_id,
    # member_id): read them, fill them into the rosters and plan again (see tasks.run).
    wanting: pd.DataFrame

    def count(self, list_id: str | None = None) -> int:
        if list_id is None:
            return len(self.changes)
        return int((self.changes["list_id"] == list_id).sum())


def _frame(columns: list[str], **data) -> pd.DataFrame:
    return pd.DataFrame({c: data.get(c, pd.Series(dtype="string")) for c in columns}, columns=columns)


def _flag(frame: pd.DataFrame, column: str) -> pd.Series:
    return frame[column].fillna(False).astype(bool)


class ListPlan(NamedTuple):
    changes: pd.DataFrame
    left_alone: pd.DataFrame
    memory: pd.DataFrame
    figures: dict
    bouncing: pd.DataFrame
    wanting: pd.DataFrame


def plan_list(usable: pd.DataFrame, roster: pd.DataFrame, ledger: pd.DataFrame, rule: ListRule,
              quarantined: pd.DataFrame, now: pd.Timestamp, bans: Sequence[str] = (),
              requests: pd.DataFrame | None = None, shared: pd.Series | None = None,
              companies: pd.DataFrame | None = None, moderators: pd.DataFrame | None = None,
              every_company: bool = True) -> ListPlan:
    """Changes, rows left alone, next ledger rows and figures for one list (see `plan_changes`).

    `shared` marks the records whose address another record has too, `companies` are the
    sweep's companies (`companies_of`): both made once for every list. `moderators` and
    `every_company`: see `plan_changes`."""
    shared = usable["match_key"].duplicated(keep=False) if shared is None else shared
    why_not, unsure = judge(usable, rule, now, companies, every_company)
    unjudged = (unsure != "").to_numpy(dtype=bool)
    if unjudged.any():
        # Quarantined on this list, with their address: what cannot be judged is never
        # subscribed nor removed, also not by another record that shares the address.
        quarantined = pd.concat([quarantined, usable.loc[unjudged, ["novi_id", "email", "match_key"]].assign(
            quarantine=unsure[unjudged])], ignore_index=True)
        kept = ~usable["match_key"].isin(usable.loc[unjudged, "match_key"]).to_numpy(dtype=bool)
        usable, why_not, shared = usable.loc[kept], why_not.loc[kept], shared.loc[kept]
    # A narrow list (a committee, a chapter) is planned from the records that can matter to it:
    # eligible ones, those whose address is on its roster or in its ledger, and those sharing an
    # address (the duplicate report). Any other record would join as "not eligible, not on the
    # list" and change nothing; judging a million of them per list cost seconds a list.
    keys = usable["match_key"]
    matters = (why_not == "").to_numpy(dtype=bool) | shared.to_numpy(dtype=bool)
    if not matters.all():
        matters |= keys.isin(roster["match_key"]).to_numpy(dtype=bool) | keys.isin(ledger["match_key"]).to_numpy(
            dtype=bool)
    judged = usable.assign(why_not=why_not) if matters.all() else usable.loc[matters].assign(why_not=why_not.loc[matters])
    winners, duplicates = one_record_per_address(judged, rule)
    joined = join_sides(winners, roster, ledger)
    where = Standing.of(joined, usable, quarantined, rule, bans, requests)
    the_changes = changes(joined, where, rule)
    if rule.moderators_from_positions:
        the_changes = _concat([the_changes, moderator_changes(winners, rule, now, moderators,
                                                              set(quarantined["match_key"].dropna()))], CHANGE_COLUMNS)
    return ListPlan(the_changes, left_alone(joined, where, rule, quarantined, duplicates),
                    _memory(joined, where, rule.list_id, now), figures(joined, where, rule, len(duplicates)),
                    bouncing(joined, where, rule.list_id),
                    joined.loc[where.wants_preferences, ["member_id"]].assign(list_id=rule.list_id))


def moderator_changes(winners: pd.DataFrame, rule: ListRule, now: pd.Timestamp,
                      moderators: pd.DataFrame | None, unjudged: set[str] = frozenset()) -> pd.DataFrame:
    """The list's moderator changes (`moderators_from_positions`): people who belong on the list
    and hold a current seat in one of those positions are made moderators; moderators this tool
    made who no longer do are unmade. Moderators it did not make are never touched.

    `moderators`: the list's moderator roster (match_key, email, member_id) joined with the ones
    this tool made (`made`); a made one no longer on the roster has no member_id. Addresses
    whose seats cannot be judged (`unjudged`, or a position's date that is not a date) are
    neither made nor unmade."""
    if moderators is None:
        moderators = pd.DataFrame({"match_key": pd.Series(dtype="string"), "email": pd.Series(dtype="string"),
                                   "member_id": pd.Series(dtype="string"), "made": pd.Series(dtype=bool)})
    positioned = rule.model_copy(update={"positions": rule.moderators_from_positions})
    seats = off_committees(winners, positioned, now)
    wanted = winners.loc[winners["eligible"].to_numpy(dtype=bool) & ~seats.off & ~seats.unsure]
    unjudged = set(unjudged) | set(winners.loc[seats.unsure, "match_key"])
    on = moderators.loc[moderators["member_id"].notna()]
    made = moderators.loc[moderators["made"].astype(bool)]
    made = made.loc[~made["match_key"].isin(wanted["match_key"]) & ~made["match_key"].isin(unjudged)]
    add = wanted.loc[~wanted["match_key"].isin(on["match_key"])]
    owner = dict(zip(winners["match_key"], winners["novi_id"]))
    return _concat([
        _frame(CHANGE_COLUMNS, list_id=rule.list_id, action=Action.MODERATE, email=add["email"],
               match_key=add["match_key"], reason=REASON_MODERATOR, novi_id=add["novi_id"],
               display_name=add["display_name"]),
        _frame(CHANGE_COLUMNS, list_id=rule.list_id, action=Action.UNMODERATE, email=made["email"],
               match_key=made["match_key"], member_id=made["member_id"],
               novi_id=made["match_key"].map(owner).astype("string"),
               reason=pd.Series(REASON_NOT_MODERATOR, index=made.index, dtype="string").where(
                   made["member_id"].notna(), REASON_MODERATOR_GONE)),
    ], CHANGE_COLUMNS)


def one_name_per_address(usable: pd.DataFrame, shared: pd.Series) -> pd.DataFrame:
    """Where records share an address, every one of them carries the same name: a person's
    before a company's, an active record's before an inactive one's, then the smallest id's. Mailman keeps one name per address across its
    lists, so two lists picking different records renamed it back and forth every run."""
    if not shared.any():
        return usable
    rows = usable.loc[shared]
    named = rows.loc[rows["display_name"].fillna("") != ""].sort_values(
        ["is_person", "active", "novi_id"], ascending=[False, False, True], kind="stable").drop_duplicates("match_key")
    usable = usable.copy()
    usable.loc[shared, "display_name"] = rows["match_key"].map(named.set_index("match_key")["display_name"])
    return usable


def one_record_per_address(judged: pd.DataFrame, rule: ListRule) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each member judged against the rule (`why_not`), one Novi record per address, and the records set aside.

    Where records share an address, the eligible one wins, then the smallest id (deterministic)."""
    members = judged.assign(eligible=judged["why_not"] == "")
    members = members.sort_values(["match_key", "eligible", "novi_id"], ascending=[True, False, True],
                                  kind="stable")
    duplicate = members["match_key"].duplicated(keep="first").to_numpy()
    winners = members.loc[~duplicate]
    dup_rows = members.loc[duplicate].merge(winners[["match_key", "novi_id"]], on="match_key", suffixes=("", "_kept"))
    duplicates = _frame(LEFT_ALONE_COLUMNS, list_id=rule.list_id, email=dup_rows["email"], novi_id=dup_rows["novi_id"],
                        reason=REASON_DUPLICATE, detail="Novi record " + dup_rows["novi_id_kept"] + " is used")
    return winners, duplicates


def join_sides(winners: pd.DataFrame, roster: pd.DataFrame, ledger: pd.DataFrame) -> pd.DataFrame:
    """One row per address any side knows: Novi's columns, the roster's (`_roster`), the ledger's (`led_`)."""
    side = winners[["match_key", "email", "novi_id", "display_name", "eligible", "why_not", "expires"]].assign(
        in_novi=True)
    on_list = roster[["match_key", "email", "display_name", "member_id", *PREFERENCE_COLUMNS, "account"]].assign(
        on_roster_now=True)
    remembered = ledger.drop(columns=["list_id"]).add_prefix("led_").rename(columns={"led_match_key": "match_key"})
    joined = (side.merge(on_list, on="match_key", how="outer", suffixes=("", "_roster"))
              .merge(remembered.assign(in_ledger=True), on="match_key", how="outer"))
    joined.index = pd.RangeIndex(len(joined))
    return joined


@dataclass(frozen=True)
class Standing:
    """Where each joined address stands, as named masks: what the changes, the rows left alone,
    the next ledger and the figures are all read from."""

    in_novi: pd.Series
    on_roster: pd.Series
    in_ledger: pd.Series
    tracked: pd.Series          # a member the ledger manages
    was_left: pd.Series         # the ledger remembers they left by themselves
    eligible: pd.Series
    held: pd.Series
    stopped: pd.Series          # on the list, delivery stopped by the member or by bounces: never held
    bouncing: pd.Series         # on the list, delivery disabled by Mailman after bounces
    bounced: pd.Series          # off the list: Mailman removed the address after bounces; not re-added
    bounced_kept: pd.Series     # ... and such rows the ledger keeps (also while the record is quarantined)
    preferences: pd.DataFrame   # per row, the preferences a subscribe restores (PREFERENCE_COLUMNS)
    owner: pd.Series            # the Novi id the row belongs to (Novi's, else the ledger's)
    owner_in_novi: pd.Series
    owner_quarantined: pd.Series
    quarantined_row: pd.Series
    protected: pd.Series
    managed: pd.Series
    address_changed: pd.Series
    newly_left: pd.Series
    removed: pd.Series          # unsubscribed for lapsing, with preferences worth restoring on renewal
    wants_preferences: pd.Series  # on the list, preferences not read, and the plan removes, holds or moves them
    blocked: pd.Series          # eligible, off the list, and left by themselves: not re-added
    banned: pd.Series           # eligible, off the list, and banned in Mailman: never a subscribe
    request: pd.Series          # the token of a moderator's pending request a subscribe resolves
    awaiting: pd.Series         # eligible, off the list, their own request awaits their confirmation
    requests_for_moderator: int
    requests_for_member: int
    staying: pd.Series
    released: pd.Series
    renamed: pd.Series
    subscribed: pd.Series
    leaving: pd.Series          # managed, no longer eligible (what the lapse policy acts on)
    leave_reason: pd.Series
    unsubscribed: pd.Series

    @classmethod
    def of(cls, joined: pd.DataFrame, usable: pd.DataFrame, quarantined: pd.DataFrame, rule: ListRule,
           bans: Sequence[str] = (), requests: pd.DataFrame | None = None) -> Standing:
        in_novi = _flag(joined, "in_novi")
        on_roster = _flag(joined, "on_roster_now")
        in_ledger = _flag(joined, "in_ledger")
        tracked = in_ledger & (joined["led_status"] == Status.MEMBER).fillna(False)
        was_left = in_ledger & (joined["led_status"] == Status.LEFT).fillna(False)
        eligible = _flag(joined, "eligible") & in_novi
        delivery = joined["delivery_status"].where(on_roster)
        held = (delivery == Delivery.BY_MODERATOR).fillna(False)
        bouncing = (delivery == Delivery.BY_BOUNCES).fillna(False)
        stopped = bouncing | (delivery == Delivery.BY_USER).fillna(False)
        # A member the last run saw with delivery disabled by bounces, now gone: Mailman removed
        # them (it does so after its warnings), not they themselves. The address stays off
        # while Novi still gives it; a new address in Novi is a new row, and is subscribed.
        newly_bounced = ~on_roster & tracked & _flag(joined, "led_on_roster") & (
            joined["led_delivery_status"] == Delivery.BY_BOUNCES).fillna(False)
        was_bounced = in_ledger & (joined["led_status"] == Status.BOUNCED).fillna(False)
        bounced = ~on_roster & in_novi & (newly_bounced | was_bounced)
        owner = joined["novi_id"].fillna(joined["led_novi_id"])
        owner_in_novi = joined["led_novi_id"].isin(usable["novi_id"]).fillna(False)
        owner_quarantined = joined["led_novi_id"].isin(quarantined["novi_id"]).fillna(False)
        # ... and a bounced address is remembered while its Novi record is quarantined, as a left row is.
        bounced_kept = bounced | (~on_roster & owner_quarantined & was_bounced)
        # An address only a quarantined record vouches for is never removed (nor is one the
        # ledger ties to a quarantined record): bad data must not cause a removal.
        quarantined_row = on_roster & ~in_novi & (joined["match_key"].isin(quarantined["match_key"]).fillna(False)
                                                  | owner_quarantined)
        protected = joined["match_key"].isin(rule.protected) & on_roster
        managed = on_roster & ~quarantined_row & (in_novi | in_ledger | (rule.scope == SCOPE_MIRROR))
        address_changed = managed & ~in_novi & in_ledger & owner_in_novi
        # Someone who was on the list and eligible at the last run, is still eligible, and is now
        # missing though this tool did not remove them, left by themselves: they stay off.
        newly_left = (~on_roster & tracked & _flag(joined, "led_on_roster") & _flag(joined, "led_eligible") & eligible
                      & ~newly_bounced)
        blocked = eligible & ~on_roster & ~bounced & _left_by_themselves(joined, newly_left, was_left, rule)
        # Mailman refuses to subscribe a banned address (400, every run): left alone instead.
        # A banned address already on the list stays, as in Mailman.
        is_banned = eligible & ~on_roster & ~blocked & ~bounced & (
            banned(joined["match_key"], bans) if bans else False)

        staying = eligible & on_roster
        # Holds are released only on lists whose rule holds lapsed members: elsewhere a hold was
        # set by a moderator, not by this tool.
        released = staying & held & (rule.lapsed == LAPSE_HOLD)
        novi_name = joined["display_name"].fillna("")
        renamed = staying & rule.update_names & (novi_name != "") & (
            novi_name != joined["display_name_roster"].fillna("")) & (
            joined["account"].isna() | rule.update_account_names)
        # A subscription request pending for this address: one waiting for the moderator is
        # resolved by the subscribe (Novi already says they belong); one waiting for the
        # person's own confirmation is theirs to answer, and is left alone.
        pending = requests if requests is not None else pd.DataFrame(columns=REQUEST_COLUMNS)
        by_moderator = pending.loc[pending["owner"] == OWNER_MODERATOR].drop_duplicates("match_key")
        by_member = set(pending.loc[pending["owner"] == OWNER_SUBSCRIBER, "match_key"])
        off_and_kept_off = ~on_roster & (blocked | is_banned | bounced)
        awaiting = eligible & ~off_and_kept_off & ~on_roster & joined["match_key"].isin(by_member).fillna(False)
        subscribed = eligible & ~on_roster & ~off_and_kept_off & ~awaiting
        request = joined["match_key"].map(by_moderator.set_index("match_key")["token"]).where(subscribed)
        resolved = set(joined.loc[request.notna(), "match_key"])
        leaving = managed & ~eligible & ~protected & ~address_changed
        leave_reason = joined["why_not"].where(in_novi, pd.Series(
            np.where(in_ledger, REASON_GONE, REASON_NOT_IN_NOVI), index=joined.index, dtype="string"))
        # An old address of a member whose Novi record now carries another one goes, whatever
        # the lapse policy: the member is subscribed under the new address instead.
        unsubscribed = address_changed & ~protected
        removed = pd.Series(False, index=joined.index)
        # Whose preferences matter: a member moving to a new address, one removed (who may
        # renew, or whose removal an undo may take back: it restores them), one about to be held
        # (not over a delivery they stopped themselves).
        # A bouncing member's are read once (the ledger keeps them): Mailman may remove them
        # before their new address is known.
        matter = unsubscribed | (bouncing & joined["led_delivery_mode"].isna())
        # An old address's preferences are remembered too: if the new address's subscribe
        # fails after the old one's removal took, the next run still has them.
        removed = address_changed & ~protected & _worth_keeping(joined)
        if rule.lapsed == LAPSE_UNSUBSCRIBE:
            unsubscribed = unsubscribed | leaving
            removed = removed | (leaving & in_novi & _worth_keeping(joined))
            matter |= leaving
        elif rule.lapsed == LAPSE_HOLD:
            matter |= leaving & ~held & ~bouncing
        wants_preferences = matter & on_roster & joined["delivery_mode"].isna()
        return cls(in_novi=in_novi, on_roster=on_roster, in_ledger=in_ledger, tracked=tracked, was_left=was_left,
                   eligible=eligible, held=held, stopped=stopped, bouncing=bouncing, bounced=bounced,
                   bounced_kept=bounced_kept,
                   preferences=_preferences(joined, owner, address_changed, in_ledger & ~on_roster),
                   owner=owner, owner_in_novi=owner_in_novi, removed=removed,
                   wants_preferences=wants_preferences,
                   owner_quarantined=owner_quarantined, quarantined_row=quarantined_row, protected=protected,
                   managed=managed, address_changed=address_changed, newly_left=newly_left, blocked=blocked,
                   banned=is_banned, request=request, awaiting=awaiting,
                   requests_for_moderator=int((~by_moderator["match_key"].isin(resolved)).sum()),
                   requests_for_member=len(by_member),
                   staying=staying, released=released, renamed=renamed, subscribed=subscribed, leaving=leaving,
                   leave_reason=leave_reason, unsubscribed=unsubscribed)


def _worth_keeping(joined: pd.DataFrame) -> pd.Series:
    """Whether a roster row's preferences differ from a fresh subscription's (worth restoring)."""
    return ((joined["delivery_mode"].fillna(REGULAR) != REGULAR) | (joined["moderation_action"].fillna("") != "")
            | (joined["delivery_status"] == Delivery.BY_USER).fillna(False))


def _preferences(joined: pd.DataFrame, owner: pd.Series, address_changed: pd.Series,
                 remembered: pd.Series) -> pd.DataFrame:
    """Per row, the preferences to subscribe it with: those its Novi member had on this list,
    under the old address the roster still holds (an address change), or as the ledger
    remembers them (a member removed for lapsing, or whose address bounced). A delivery
    status travels only when the member chose it (`by_user`): a new address starts enabled."""
    def of(rows: pd.DataFrame, prefix: str) -> pd.DataFrame:
        # By the member the ledger tied the row to: an address Novi now gives someone else
        # carries its old owner's preferences to the old owner, not to the new one.
        prefs = rows[[prefix + c for c in PREFERENCE_COLUMNS]].set_axis(PREFERENCE_COLUMNS, axis=1)
        return prefs.assign(novi_id=rows["led_novi_id"])
    known = pd.concat([of(joined.loc[address_changed], ""), of(joined.loc[remembered], "led_")])
    known = known.loc[known["novi_id"].notna()].drop_duplicates("novi_id").set_index("novi_id")
    prefs = pd.DataFrame({c: joined["novi_id"].map(known[c]).astype("string") for c in PREFERENCE_COLUMNS},
                         index=joined.index)
    prefs["delivery_mode"] = prefs["delivery_mode"].fillna(REGULAR)
    prefs["moderation_action"] = prefs["moderation_action"].fillna("")
    prefs["delivery_status"] = prefs["delivery_status"].where(prefs["delivery_status"] == Delivery.BY_USER,
                                                              Delivery.ENABLED)
    return prefs


def _left_by_themselves(joined: pd.DataFrame, newly_left: pd.Series, was_left: pd.Series,
                        rule: ListRule) -> pd.Series:
    """Whether each row's Novi member left the list by themselves and the rule keeps them off."""
    left_owners = pd.concat([joined.loc[newly_left, ["novi_id"]].assign(left_expires=joined.loc[newly_left, "expires"]),
                             joined.loc[was_left, ["led_novi_id"]].rename(columns={"led_novi_id": "novi_id"})
                             .assign(left_expires=joined.loc[was_left, "led_left_expires"])])
    if left_owners.empty or rule.self_unsubscribe == SELF_OVERRIDE:
        # Nobody left (mapping onto an empty datetime Series raises under pandas 3), or the
        # rule re-adds everyone.
        return pd.Series(False, index=joined.index)
    left_until = left_owners.groupby("novi_id")["left_expires"].max()
    left = joined["novi_id"].isin(left_until.index).fillna(False)
    if rule.self_unsubscribe == SELF_UNTIL_RENEWAL:
        renewed = joined["expires"] > joined["novi_id"].map(left_until)
        return left & ~renewed.fillna(False).astype(bool)
    return left


def changes(joined: pd.DataFrame, where: Standing, rule: ListRule) -> pd.DataFrame:
    """The list's changes, each with the address it acts on and why."""
    resolving = where.request.notna()
    wanted: list[tuple[pd.Series, str, object, str]] = [
        (where.subscribed & ~resolving, Action.SUBSCRIBE, REASON_SUBSCRIBE, "email"),
        (where.subscribed & resolving, Action.SUBSCRIBE, REASON_REQUEST, "email"),
        (where.released, Action.RELEASE, REASON_RELEASE, "email_roster"),
        (where.renamed, Action.RENAME, REASON_RENAME, "email_roster"),
        (where.address_changed & ~where.protected, Action.UNSUBSCRIBE, REASON_ADDRESS_CHANGED, "email_roster"),
    ]
    if rule.lapsed == LAPSE_UNSUBSCRIBE:
        wanted.append((where.leaving, Action.UNSUBSCRIBE, where.leave_reason, "email_roster"))
    elif rule.lapsed == LAPSE_HOLD:
        wanted.append((where.leaving & ~where.held & ~where.stopped, Action.HOLD, where.leave_reason, "email_roster"))
    parts = []
    for mask, action, reason, email_column in wanted:
        rows = joined.loc[mask]
        if not rows.empty:
            parts.append(_frame(
                CHANGE_COLUMNS, list_id=rule.list_id, action=action, email=rows[email_column],
                match_key=rows["match_key"], reason=_pick(reason, mask), novi_id=where.owner.loc[mask],
                display_name=rows["display_name"], member_id=rows["member_id"], request=where.request.loc[mask],
                previous=rows["display_name_roster"] if action != Action.SUBSCRIBE else pd.Series(dtype="string"),
                # A subscribe carries the preferences to subscribe with; a removal or hold those the
                # roster had, which an undo of the run restores (tasks.core.undo).
                **{c: where.preferences.loc[mask, c] if action == Action.SUBSCRIBE else rows[c]
                   for c in PREFERENCE_COLUMNS},
                account=rows["account"] if action != Action.SUBSCRIBE else pd.Series(dtype="string")))
    return _concat(parts, CHANGE_COLUMNS)


def left_alone(joined: pd.DataFrame, where: Standing, rule: ListRule, quarantined: pd.DataFrame,
               duplicates: pd.DataFrame) -> pd.DataFrame:
    """Roster rows and Novi records the plan does not act on, each with its reason."""
    w = where
    kept: list[tuple[pd.Series, object]] = [
        (w.on_roster & ~w.in_novi & ~w.in_ledger & ~w.quarantined_row & (rule.scope == SCOPE_MANAGED),
         REASON_UNMANAGED),
        (w.managed & ~w.eligible & w.protected, REASON_PROTECTED),
        (w.blocked, REASON_LEFT),
        (w.banned, REASON_BANNED),
        (w.awaiting, REASON_AWAITING),
        (w.bounced & w.eligible, REASON_BOUNCED),
    ]
    if rule.lapsed == LAPSE_KEEP:
        kept.append((w.leaving, "kept (lapsed: keep): " + w.leave_reason))
    elif rule.lapsed == LAPSE_HOLD:
        kept.append((w.leaving & w.held, "already held: " + w.leave_reason))
        by_whom = joined["delivery_status"].map(STOPPED_BY).fillna("")
        kept.append((w.leaving & w.stopped & ~w.held, f"{REASON_STOPPED} " + by_whom + ": " + w.leave_reason))
    parts = [duplicates]
    for mask, reason in kept:
        rows = joined.loc[mask]
        if not rows.empty:
            parts.append(_frame(LEFT_ALONE_COLUMNS, list_id=rule.list_id,
                                email=rows["email_roster"].fillna(rows["email"]), novi_id=w.owner.loc[mask],
                                reason=_pick(reason, mask)))
    q = joined.loc[w.quarantined_row, ["match_key", "led_novi_id"]]
    if not q.empty:
        # One reason per address: several quarantined records may share it.
        why = q.merge(quarantined.drop_duplicates("match_key"), on="match_key", how="left")["quarantine"].to_numpy()
        by_owner = q["led_novi_id"].map(quarantined.drop_duplicates("novi_id").set_index("novi_id")["quarantine"])
        reason = pd.Series(why, index=q.index, dtype="string").fillna(by_owner.astype("string"))
        parts.append(_frame(LEFT_ALONE_COLUMNS, list_id=rule.list_id, email=joined.loc[q.index, "email_roster"],
                            novi_id=q["led_novi_id"].fillna(pd.NA),
                            reason="quarantined in Novi: " + reason.fillna("unknown")))
    return _concat(parts, LEFT_ALONE_COLUMNS)


def figures(joined: pd.DataFrame, where: Standing, rule: ListRule, duplicates: int) -> dict:
    """The list's counts: what the summary shows and the guards compare."""
    w = where
    seen_last_time = w.tracked & _flag(joined, "led_on_roster")
    return {
        "list_id": rule.list_id,
        "eligible": int(w.eligible.sum()),
        "roster": int(w.on_roster.sum()),
        "managed": int(w.managed.sum()),
        "in_step": int((w.staying & ~w.released & ~w.renamed).sum()),
        "quarantined_on_roster": int(w.quarantined_row.sum()),
        "duplicates": duplicates,
        "remembered": int(seen_last_time.sum()),
        "vanished": int((seen_last_time & ~w.on_roster).sum()),
        "banned": int(w.banned.sum()),
        "requests_for_moderator": w.requests_for_moderator,
        "requests_for_member": w.requests_for_member,
        "bouncing": int(w.bouncing.sum()),
        "bounced": int((w.bounced & w.eligible).sum()),
    }


def bouncing(joined: pd.DataFrame, where: Standing, list_id: str) -> pd.DataFrame:
    """For membership staff: the Novi records whose address Mailman disabled after bounces (on
    the list) or removed after bounces (kept off), so the address can be corrected in Novi."""
    w = where
    on = joined.loc[w.bouncing & w.owner.notna()]
    off = joined.loc[w.bounced]
    return _concat([
        _frame(BOUNCING_COLUMNS, list_id=list_id, email=on["email_roster"], novi_id=w.owner.loc[on.index],
               display_name=on["display_name"].fillna(on["display_name_roster"]), state=BOUNCE_DISABLED),
        _frame(BOUNCING_COLUMNS, list_id=list_id, email=off["email"], novi_id=off["novi_id"],
               display_name=off["display_name"], state=BOUNCE_REMOVED),
    ], BOUNCING_COLUMNS)


def _pick(reason, mask: pd.Series):
    """A reason given once for all rows, or per row."""
    return reason if isinstance(reason, str) else reason.loc[mask]



def _memory(joined: pd.DataFrame, where: Standing, list_id: str, now: pd.Timestamp) -> pd.DataFrame:
    """The list's ledger rows after this plan, if every change succeeds.

    Members: addresses subscribed now, and roster addresses that Novi or the ledger ties to a
    member (adopted on first sight, without any write to Mailman), with their preferences.
    Remembered while their Novi record exists: members who left by themselves, members this
    tool removed for lapsing whose preferences a renewal restores, and (while Novi still gives
    that address) addresses Mailman removed after bounces. Everything else is forgotten.
    A row that depends on a change names it in `waits_on` (see `settle`).
    """
    w = where
    subscribed, unsubscribed, newly_left = w.subscribed, w.unsubscribed, w.newly_left
    member = subscribed | (w.on_roster & (w.in_novi | w.in_ledger))
    off_but_known = ~w.on_roster & (w.owner_in_novi | w.owner_quarantined)
    still_left = w.was_left & off_but_known
    left = (newly_left | still_left) & ~w.on_roster
    # A removed member's row is kept until they are on the list again (under any address).
    on_list_again = joined["led_novi_id"].isin(w.owner.loc[w.on_roster & w.in_novi & ~unsubscribed]).fillna(False)
    still_removed = (w.in_ledger & (joined["led_status"] == Status.REMOVED).fillna(False) & off_but_known
                     & ~on_list_again)
    removed = w.removed | still_removed
    bounced = w.bounced_kept & ~subscribed

    rows = [_memory_rows(joined, w, member, Status.MEMBER, now)]
    for mask, status in ((left & ~removed, Status.LEFT), (removed, Status.REMOVED), (bounced, Status.BOUNCED)):
        # A remembered row of someone subscribed now is kept only if the subscribe fails; a
        # removal's row only if the unsubscribe takes.
        rows.append(_memory_rows(joined, w, mask & ~(member & ~subscribed & ~unsubscribed), status, now))
    frame = pd.concat(rows).assign(list_id=list_id)
    for column in ["list_id", "match_key", "email", "novi_id", "status", "how", "waits_on", *PREFERENCE_COLUMNS]:
        frame[column] = frame[column].astype("string")
    for column in TIMESTAMP_COLUMNS:
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame[MEMORY_COLUMNS].reset_index(drop=True)


def _memory_rows(joined: pd.DataFrame, where: Standing, mask: pd.Series, status: str,
                 now: pd.Timestamp) -> pd.DataFrame:
    """The ledger rows of `mask`'s addresses in one status, each naming the change it waits on
    (see `_memory`)."""
    w = where
    rows = joined.loc[mask]
    idx = rows.index
    is_member = status == Status.MEMBER
    on_roster = w.on_roster.loc[idx]
    subscribed = w.subscribed.loc[idx]
    is_eligible = w.eligible.loc[idx]
    led_how = rows["led_how"]
    how = led_how.where(led_how.notna(), pd.Series(np.where(subscribed, How.SUBSCRIBED, How.ADOPTED),
                                                   index=idx, dtype="string"))
    # Preferences: on the list, as read now, else as last read (a bouncing member's are read
    # once); off it, a subscribe's as it restores them, else as remembered.
    prefs = {}
    for c in PREFERENCE_COLUMNS:
        restored = w.preferences.loc[idx, c].where(subscribed & is_member)
        prefs[c] = rows[c].where(on_roster).fillna(restored).fillna(rows["led_" + c])
    newly_off = (w.newly_left | w.removed).loc[idx] | (
        w.bounced.loc[idx] & (rows["led_status"] != Status.BOUNCED).fillna(True))
    frame = pd.DataFrame({
        "match_key": rows["match_key"],
        "email": rows["email_roster"].fillna(rows["email"]).fillna(rows["led_email"]),
        "novi_id": w.owner.loc[idx],
        "status": status,
        "how": how,
        "on_roster": is_member,
        "eligible": is_eligible.to_numpy(dtype=bool),
        "first_managed_at": rows["led_first_managed_at"].fillna(now),
        # Since when: stamped when the address comes on the roster, or becomes eligible, and kept
        # while it stays so. A row that did not change is then the same row: the ledger writes
        # only the rows that changed (a quiet night, a handful instead of every member).
        "last_seen_on_roster_at": rows["led_last_seen_on_roster_at"].where(
            ~(on_roster | is_member) | (_flag(rows, "led_on_roster") & rows["led_last_seen_on_roster_at"].notna()),
            now),
        "last_eligible_at": rows["led_last_eligible_at"].where(
            ~is_eligible | (_flag(rows, "led_eligible") & rows["led_last_eligible_at"].notna()), now),
        "left_at": pd.NaT if is_member else rows["led_left_at"].where(~newly_off, now),
        "left_expires": pd.NaT if is_member else rows["led_left_expires"].where(
            ~w.newly_left.loc[idx], rows["expires"]),
        **prefs,
    }, index=idx)
    frame["on_roster"] = frame["on_roster"].astype(bool)
    frame["waits_on"] = np.where(subscribed, Action.SUBSCRIBE, np.where(w.unsubscribed.loc[idx], Action.UNSUBSCRIBE, ""))
    return frame


def settle(memory: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    """The ledger rows to store once the changes ran. A row waiting on a change holds the state
    after it (a member after a subscribe; anything but a member after an unsubscribe) and is
    kept if the change took, or the state before it, kept if it did not: a subscribe that did
    not take is not a member, a removal that failed still is. Outcomes carry `list_id`,
    `action`, `match_key`, `outcome`."""
    done = outcomes.loc[outcomes["outcome"].isin(TOOK)]
    took = (done[["list_id", "action", "match_key"]].rename(columns={"action": "waits_on"})
            .assign(took=True).drop_duplicates())
    merged = memory.merge(took, on=["list_id", "waits_on", "match_key"], how="left")
    took = merged["took"].fillna(False).astype(bool).to_numpy()
    waits_on = memory["waits_on"].fillna("").to_numpy()
    is_member = (memory["status"] == Status.MEMBER).to_numpy(dtype=bool)
    after = np.where(waits_on == Action.SUBSCRIBE, is_member, ~is_member)
    keep = (waits_on == "") | (took == after)
    return memory.loc[keep, LEDGER_COLUMNS].reset_index(drop=True)


def _concat(parts: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    parts = [p for p in parts if not p.empty]
    if not parts:
        return _frame(columns)
    return pd.concat(parts, ignore_index=True)[columns]


def plan_changes(members: pd.DataFrame, rosters: Mapping[str, pd.DataFrame], rules: Rules,
         ledger: pd.DataFrame | None = None, now: pd.Timestamp | None = None,
         bans: Mapping[str, Sequence[str]] | None = None,
         requests: Mapping[str, pd.DataFrame] | None = None,
         moderators: Mapping[str, pd.DataFrame] | None = None, every_company: bool = True) -> Plan:
    """Compare who should be on each list (its rule) with who is, for every list in the rules.

    `members` is the members frame, `rosters` maps each dot-form list id to its roster frame,
    `ledger` is what earlier runs remember (none on a first run); their columns are named in
    tasks.core.schema. `bans` maps a list id to the bans that apply to it (the list's and the
    global ones, as Mailman stores them); `requests` a list id to its pending subscription
    requests (tasks.core.schema.REQUEST_COLUMNS); `moderators` a list id with
    `moderators_from_positions` to its moderators (see `moderator_changes`). Quarantined records are never subscribed,
    and an address on a roster that only a quarantined record knows is left alone; so is, on
    one list, a record whose routing fields that list reads cannot be read (`judge`).
    `every_company` False: `members` are not every record (a member run): whether someone is a
    company's contact is left to the full sync.
    """
    ledger = empty_ledger() if ledger is None else ledger
    now = now if now is not None else pd.Timestamp.now(tz="UTC")
    is_quarantined = members["quarantine"].notna()
    usable = members.loc[~is_quarantined & members["match_key"].notna()]
    quarantined = members.loc[is_quarantined, ["novi_id", "email", "match_key", "quarantine"]]

    bans, requests, moderators = bans or {}, requests or {}, moderators or {}
    shared = usable["match_key"].duplicated(keep=False)
    usable = one_name_per_address(usable, shared)
    companies = companies_of(members)  # all of them: a company without an address still has people
    per_list = [plan_list(usable, rosters[rule.list_id], ledger.loc[ledger["list_id"] == rule.list_id], rule,
                          quarantined, now, bans.get(rule.list_id, ()), requests.get(rule.list_id), shared,
                          companies, moderators.get(rule.list_id), every_company)
                for rule in rules.lists]
    changes = _concat([one.changes for one in per_list], CHANGE_COLUMNS)
    changes["action"] = pd.Categorical(changes["action"], categories=list(ACTIONS))
    changes = changes.sort_values(["list_id", "action", "email"], kind="stable", ignore_index=True)
    changes["action"] = changes["action"].astype("string")
    memory = pd.concat([one.memory for one in per_list], ignore_index=True) if per_list else empty_ledger()
    return Plan(changes=changes, left_alone=_concat([one.left_alone for one in per_list], LEFT_ALONE_COLUMNS),
                figures=pd.DataFrame([one.figures for one in per_list], columns=FIGURE_COLUMNS),
                quarantined=quarantined.reset_index(drop=True), memory=memory,
                bouncing=_concat([one.bouncing for one in per_list], BOUNCING_COLUMNS),
                wanting=_concat([one.wanting for one in per_list], WANTING_COLUMNS))
