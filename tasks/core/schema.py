"""The contracts every part shares, named once: frame columns, actions, outcomes, reasons, run
states, the run summary, the list-id form, Novi's GUID and the defaults several modules read.

Nothing heavy is imported here (not even pandas, but inside `empty_ledger`): the command
line's help reads these names and must answer at once.
"""

from __future__ import annotations

import re
from typing import Literal, TypedDict


class Action:
    """What a change does to one address on one list."""

    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    HOLD = "hold"          # delivery held by the moderator: still on the list, no mail
    RELEASE = "release"    # a hold this tool set, lifted
    RENAME = "rename"      # the address's display name, from Novi
    MODERATE = "moderate"      # made a moderator of the list (a committee position: moderators_from_positions)
    UNMODERATE = "unmoderate"  # a moderator this tool made, no longer in the position


MEMBER_ACTIONS = (Action.SUBSCRIBE, Action.UNSUBSCRIBE, Action.HOLD, Action.RELEASE, Action.RENAME)
ROLE_ACTIONS = (Action.MODERATE, Action.UNMODERATE)  # on the list's moderator roster, not its members
ACTIONS = (*MEMBER_ACTIONS, *ROLE_ACTIONS)
REMOVING = (Action.UNSUBSCRIBE, Action.HOLD)  # what the removal guards count


class Outcome:
    """What became of one change."""

    APPLIED = "applied"
    ALREADY = "already so"       # Mailman already had it that way: as good as applied
    PENDING = "pending"          # Mailman holds a request for a moderator
    FAILED = "failed"
    PLANNED = "planned (dry run)"
    REFUSED = "refused by a guard"


# Why a change is made or a row left alone, as the plan, the ledger's history and the artifacts
# say it (the planner composes the rest: "status expired", "company Acme is expired", …).
REASON_SUBSCRIBE = "eligible, not on the list"
REASON_RELEASE = "eligible again, delivery was held"
REASON_RENAME = "name changed in Novi"
REASON_NOT_IN_NOVI = "not in Novi"
REASON_UNMANAGED = "unmanaged: not in Novi"
REASON_PROTECTED = "protected address"
REASON_ADDRESS_CHANGED = "address changed in Novi"
REASON_GONE = "no longer in Novi"
REASON_LEFT = "left the list themselves"
REASON_BANNED = "banned in Mailman"
REASON_DUPLICATE = "duplicate address"   # its detail names the Novi record whose address it is
REASON_OPTED_OUT = "opted out of email in Novi"
COMMITTEE_TERM_ENDED = "committee term ended"
REASON_MODERATOR = "holds a position that moderates the list"
REASON_NOT_MODERATOR = "no longer holds a position that moderates the list"
REASON_MODERATOR_GONE = "no longer a moderator in Mailman: not this tool's to track"
REASON_REQUEST = "eligible; their request waiting for the moderator is resolved"
REASON_AWAITING = "their own request waits for their confirmation"
BOUNCE_DISABLED = "delivery disabled by bounces"
BOUNCE_REMOVED = "removed by Mailman after bounces"
REASON_BOUNCED = f"{BOUNCE_REMOVED}: correct the address in Novi"
REASON_STOPPED = "delivery already stopped"


TOOK = (Outcome.APPLIED, Outcome.ALREADY)  # the change holds in Mailman now


class RunState:
    """How a run ended, as the ledger and the summary say it."""

    COMPLETED = "completed"
    FAILED = "failed"
    REFUSED = "refused"
    CRASHED = "crashed"   # died mid-apply; recorded by the run that settled its intents (tasks.core.intents)


class Tag:
    """What a run says of itself in Prefect's runs list (tags are shown and filtered on there)."""

    DRY_RUN = "dry-run"
    REFUSED = RunState.REFUSED
    APPROVED = "approved"
    OVERRIDDEN = "guards-overridden"
    MEMBER_SYNC = "member-sync"
    UNDO = "undo"
    NO_CHANGES = "no-changes"


class RunKind:
    FULL = "full"        # every member, every roster
    MEMBER = "member"    # a few members (a webhook's batch)
    UNDO = "undo"        # the inverse of an earlier run (tasks.core.undo)


class Status:
    """A ledger row: a member the tool manages, or someone who left the list by themselves."""

    MEMBER = "member"
    LEFT = "left"
    REMOVED = "removed"   # removed by this tool for lapsing; remembered for the preferences to restore
    BOUNCED = "bounced"   # removed by Mailman after bounces; stays off until Novi's address changes


class Delivery:
    """A member's delivery status in Mailman (its DeliveryStatus): who stopped the mail, if anyone."""

    ENABLED = "enabled"
    BY_USER = "by_user"            # the member stopped delivery themselves: a preference, kept
    BY_MODERATOR = "by_moderator"  # held (this tool's hold, or a moderator's)
    BY_BOUNCES = "by_bounces"      # Mailman stopped it after bounces: never re-enabled here


# What travels with a member across an address change and a lapse-and-renewal: the roster's
# `delivery_mode` (regular or a digest) and `moderation_action` ('' = the list's default),
# and the delivery status the member chose (`by_user`; anything else starts `enabled`).
PREFERENCE_COLUMNS = ["delivery_mode", "moderation_action", "delivery_status"]
REGULAR = "regular"


class How:
    SUBSCRIBED = "subscribed"   # this tool subscribed the address
    ADOPTED = "adopted"         # found on the list, tied to a Novi member


# Rule settings (tasks.core.rules validates them; the planner branches on them).
LapsePolicy = Literal["unsubscribe", "hold", "keep"]
Scope = Literal["managed", "mirror"]
SelfUnsubscribe = Literal["respect", "until_renewal", "override"]
LAPSE_UNSUBSCRIBE, LAPSE_HOLD, LAPSE_KEEP = "unsubscribe", "hold", "keep"
SCOPE_MANAGED, SCOPE_MIRROR = "managed", "mirror"
SELF_RESPECT, SELF_UNTIL_RENEWAL, SELF_OVERRIDE = "respect", "until_renewal", "override"

# Rows of the plan CSV that are not changes.
LEFT_ALONE = "left alone"
QUARANTINED = "quarantined"
BOUNCING = "bouncing"   # a Novi record whose address Mailman disabled or removed after bounces

# --- frames -------------------------------------------------------------------------------
# The members frame (tasks.novi.members_frame): one row per Novi record.
MEMBER_COLUMNS = [
    "novi_id", "email", "match_key", "display_name", "status", "active", "customer_type",
    "is_person", "member_type", "member_type_id", "group_ids", "group_names", "opted_out",
    "expires", "quarantine",
    # Committee seats, each (committee id, committee name casefolded, position casefolded, start,
    # end: dates as Novi sends them, None when absent; the planner reads them only for a rule
    # that names committees), and custom fields (name as Novi shows it → value).
    "seats", "custom_fields",
    # Companies and their people (lowercased UniqueIDs, NA when absent): a person's parent
    # company; on a company, its primary and billing contacts.
    "parent_id", "primary_contact_id", "billing_contact_id",
    # The routing fields of the record that cannot be read (Committees, CustomFields or one
    # CustomFields.<name>, a contact id): a list whose rule reads one does not judge the record.
    "unreadable",
]
# Routing fields a rule may read, besides those every rule reads (tasks.novi quarantines a
# record whose Active, MemberStatus… has the wrong type): a record whose field cannot be read
# keeps its row, but a list whose rule reads that field does not judge it (the planner
# quarantines it there), so it is never the cause of a removal.
CONTACT_FIELDS = ("ParentCustomerUniqueID", "PrimaryContactUniqueId", "BillingContactUniqueId")
COMMITTEES = "Committees"
CUSTOM_FIELDS = "CustomFields"
INHERITING = "inheriting"  # Novi's MemberStatus of a person whose membership comes from a company
STATUSES_ANY = "any"  # a rule's `statuses: any`: whatever their membership (a committee of non-members)
# A roster frame (tasks.mailman): one row per member of one list. `account`: the Mailman user
# (a Postorius account) the membership is held through, when it is (subscription_mode as_user):
# the roster then shows the name the person chose in their account, not the address's.
ROSTER_COLUMNS = ["list_id", "email", "match_key", "display_name", "member_id", *PREFERENCE_COLUMNS, "account"]
# The plan's changes; `match_key` travels with each so nobody recomputes it; `request` is the
# token of a subscription request a subscribe resolves (one waiting for the moderator).
# A subscribe carries the preferences to subscribe with (the member's earlier ones, or Mailman's defaults);
# a change to a roster row (unsubscribe, hold, release, rename) the preferences and the name
# (`previous`) the roster had: what a rename replaces, and what an undo of the run restores.
CHANGE_COLUMNS = ["list_id", "action", "email", "match_key", "reason", "novi_id", "display_name", "member_id",
                  "request", "previous", *PREFERENCE_COLUMNS, "account"]
# A list's pending subscription requests (tasks.mailman): `owner` is who must act on it.
REQUEST_COLUMNS = ["match_key", "token", "owner"]
OWNER_MODERATOR, OWNER_SUBSCRIBER = "moderator", "subscriber"
# ... and once applied (or not), each change's outcome.
OUTCOME_COLUMNS = [*CHANGE_COLUMNS, "outcome", "detail"]
# What the ledger remembers per list and address (tasks.ledger stores exactly these), and the
# next state a plan implies: `waits_on` names the change the row's existence waits on.
LEDGER_COLUMNS = ["list_id", "match_key", "email", "novi_id", "status", "how", "on_roster", "eligible",
                  "first_managed_at", "last_seen_on_roster_at", "last_eligible_at", "left_at", "left_expires",
                  *PREFERENCE_COLUMNS]
MEMORY_COLUMNS = [*LEDGER_COLUMNS, "waits_on"]
TIMESTAMP_COLUMNS = ["first_managed_at", "last_seen_on_roster_at", "last_eligible_at", "left_at", "left_expires"]
FLAG_COLUMNS = ["on_roster", "eligible"]
LEFT_ALONE_COLUMNS = ["list_id", "email", "novi_id", "reason", "detail"]
# Per list: `remembered` are the members the ledger saw on the list at its last run,
# `vanished` those of them the roster no longer holds (what the roster-collapse guard reads).
# `bouncing`: members whose delivery Mailman disabled after bounces; `bounced`: eligible members
# Mailman removed after bounces, kept off until their Novi address changes.
# `banned`: eligible members Mailman bans from the list (left alone, never a subscribe);
# `requests_for_moderator` / `requests_for_member`: subscription requests left untouched, waiting
# for the list's moderator or for the person's own confirmation.
FIGURE_COLUMNS = ["list_id", "eligible", "roster", "managed", "in_step", "quarantined_on_roster", "duplicates",
                  "remembered", "vanished", "banned", "requests_for_moderator", "requests_for_member",
                  "bouncing", "bounced"]
# --- the run summary: what a flow returns and `--json` prints (README "The run summary") ------
class ListSummary(TypedDict):
    """One list of a run: its figures (FIGURE_COLUMNS), then what the run did to it."""

    list_id: str
    eligible: int
    roster: int
    managed: int
    in_step: int
    quarantined_on_roster: int
    duplicates: int
    remembered: int
    vanished: int
    banned: int
    requests_for_moderator: int
    requests_for_member: int
    bouncing: int
    bounced: int
    changes: dict[str, int]               # by action, every action
    outcomes: dict[str, int]              # by outcome
    reasons: dict[str, dict[str, int]]    # by action, then reason
    left_alone: dict[str, int]            # by reason
    owner_notices: int                    # notices Mailman sends the list's owners for these changes
    open_door: str | None                 # a subscription policy letting people join around Novi, else None
    banned_members: list[dict]            # eligible members Mailman bans: email, novi_id (the first 100)


class _RunFacts(TypedDict):
    """What every finished run says of itself (tasks.run.Run.finish)."""

    state: str                 # RunState
    message: str               # the state message: what happened, and what to do
    dry_run: bool
    duration_s: float
    ledger: str                # where the ledger is (a path, or a URL without its password)
    guards: list[str]          # the guards that tripped, with their figures
    flow_run_id: str | None
    plan_fingerprint: str
    ledger_rows_written: int
    phases_s: dict[str, float]     # where the time went
    http_calls: dict[str, int]     # calls by kind


class _SyncSummary(_RunFacts):
    novi_members: int
    quarantined: int
    quarantine_reasons: dict[str, int]
    bouncing: dict[str, int]       # memberships whose address bounces, by what Mailman did
    changes: int
    outcomes: dict[str, int]
    lists: list[ListSummary]
    plan_csv: str | None
    guards_overridden: bool
    approved_plan: str | None      # the fingerprint an operator approved, when the guards had refused it


class RunSummary(_SyncSummary, total=False):
    """A full or member run's summary. A member run adds the members it was asked for."""

    members: list[str]
    not_found: list[str]


class _UndoSummary(TypedDict):
    state: str
    message: str
    dry_run: bool
    undoes: str                    # the undone run's name
    changes: list[dict]            # each change with its outcome
    skipped: list[dict]            # what changed since, left as it is


class UndoSummary(_UndoSummary, total=False):
    """An undo's summary; one with nothing to undo has only the keys above."""

    duration_s: float
    ledger: str
    guards: list[str]
    flow_run_id: str | None
    plan_fingerprint: str
    ledger_rows_written: int
    phases_s: dict[str, float]
    http_calls: dict[str, int]


def note(summary: RunSummary | UndoSummary, text: str, *, first: bool = False) -> None:
    """Add to a summary's message: in brackets after it, or (`first`) as a sentence before it.
    The one way a summary changes once built."""
    summary["message"] = f"{text} {summary['message']}" if first else f"{summary['message']} ({text})"


# For membership staff: Novi records whose address Mailman disabled or removed after bounces.
BOUNCING_COLUMNS = ["list_id", "email", "novi_id", "display_name", "state"]
# Members whose preferences a plan needs and the roster read did not bring.
WANTING_COLUMNS = ["list_id", "member_id"]
# One row of the plan CSV: a change, a row left alone, or a quarantined record.
PLAN_ROW_COLUMNS = ["list_id", "action", "email", "display_name", "previous", "novi_id", "reason", "outcome", "detail"]

# --- identifiers and defaults --------------------------------------------------------------
GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
NOVI_PAGE_SIZE = 500             # records per Novi page (rules: novi.page_size)
KEEP_HISTORY_DAYS = 90           # rules: ledger.keep_history_days (README: Privacy, for the choice)
MAX_MEMBERS_PER_RUN = 1000       # a member run's ceiling; more is the full sync's job
FINGERPRINT_LENGTH = 12          # a plan's fingerprint, in hex digits (tasks.core.guards.fingerprint)

# Mailman's own list-name characters (mailman/app/lifecycle.py), then a domain of one or more dots.
_LIST_LOCAL = r"[-_.+=!$*{}~0-9a-z]+"
_LIST_DOMAIN = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+"
_LIST_ID = re.compile(rf"(?!.*\.\.)(?!\.){_LIST_LOCAL}[.@]{_LIST_DOMAIN}")


def dot_list_id(name: str) -> str:
    """`members@example.org` or `members.example.org` → `members.example.org` (what POST /members needs).

    Only Mailman's `local.domain` form passes: a `/`, `?`, `#`, `..`, a NUL or a newline would
    make the id a path of another resource (`x.org/roster/member#`), under another lock."""
    text = name.strip().lower()
    if text.count("@") > 1 or not _LIST_ID.fullmatch(text) or len(text) > 255:
        shown = "".join(c if c.isprintable() else "?" for c in name)[:80]
        raise ValueError(f"not a Mailman list id (local@domain or local.domain): {shown!r}")
    return text.replace("@", ".", 1)


def empty_ledger():
    """A ledger frame with no rows (the first run, or a dry run with no ledger yet), typed."""
    import pandas as pd

    frame = pd.DataFrame({c: pd.Series(dtype="string") for c in LEDGER_COLUMNS})
    for c in TIMESTAMP_COLUMNS:
        frame[c] = pd.Series(dtype="datetime64[ns, UTC]")
    for c in FLAG_COLUMNS:
        frame[c] = frame[c].astype(bool)
    return frame


def approved_fingerprint(value: str | None, *, override_guards: bool = False) -> str | None:
    """An operator's `approve` value as a fingerprint, or None; anything else is refused, and so
    is an approval given with `override_guards` (one plan, or any plan: not both)."""
    if value is None or not value.strip():
        return None
    if override_guards:
        from tasks.errors import BadParameter

        raise BadParameter("give approve or override_guards, not both: approve applies one plan, "
                           "override_guards any plan")
    text = value.strip().lower()
    if len(text) != FINGERPRINT_LENGTH or any(c not in "0123456789abcdef" for c in text):
        from tasks.errors import BadParameter

        raise BadParameter(f"approve must be a plan's fingerprint: {FINGERPRINT_LENGTH} hex digits, as the refused "
                         "run printed it")
    return text


def missing_as_none(frame):
    """The frame with every missing value as None (object columns): rows fit to hand to a
    driver, a JSON encoder or a test of truth (pandas' NA has none)."""
    return frame.astype(object).where(frame.notna(), None)
