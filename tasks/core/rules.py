"""Routing rules: which Mailman list holds which Novi members. One model, validated once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.core.schema import (
    KEEP_HISTORY_DAYS,
    LAPSE_UNSUBSCRIBE,
    NOVI_PAGE_SIZE,
    SCOPE_MANAGED,
    SELF_RESPECT,
    STATUSES_ANY,
    LapsePolicy,
    Scope,
    SelfUnsubscribe,
    dot_list_id,
)
from tasks.errors import RulesError

AddressField = Literal["Email", "AccountEmail", "PersonalEmail"]
CompanyContact = Literal["primary", "billing", "all"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoviSettings(_Strict):
    """How the members are read from Novi."""

    address_fields: list[AddressField] = Field(default=["Email", "AccountEmail"], min_length=1)
    page_size: int = Field(default=NOVI_PAGE_SIZE, ge=1, le=1000)


class LedgerSettings(_Strict):
    """How long the ledger and the run's reports keep members' personal data (README: Privacy)."""

    # The change history, the runs' records and figures, removed members' preferences, the plan
    # CSVs and the runs' table artifacts older than this are removed after each real full run
    # and by `novi-mailman ledger prune`; what the sync needs to stay right is kept whatever its age.
    keep_history_days: int = Field(default=KEEP_HISTORY_DAYS, ge=1, le=3650)


class DigestSettings(_Strict):
    """Who hears of a run's changes to a list: after each real run that changed it, one short
    message (tasks.core.digest) by e-mail or through any saved Prefect notification block."""

    to: list[str] | Literal["owners"] = "owners"  # addresses, or the list's owners in Mailman (e-mail)
    email_block: str | None = None    # a saved prefect-email EmailServerCredentials block
    notify_block: str | None = None   # or a saved Prefect notification block (Slack, Teams, a webhook…)
    from_address: str | None = None   # the e-mail's sender; default: the email block's username

    @model_validator(mode="after")
    def _one_way(self) -> DigestSettings:
        if bool(self.email_block) == bool(self.notify_block):
            raise ValueError("digest needs exactly one of email_block (e-mail) or notify_block")
        if isinstance(self.to, list) and (not self.to or any(v.count("@") != 1 for v in self.to)):
            raise ValueError("digest.to must be `owners` or a list of e-mail addresses")
        return self


class ListRule(_Strict):
    """Who belongs on one list, and what happens to those who no longer do."""

    list_id: str
    statuses: list[str] | Literal[STATUSES_ANY] = Field(default=["current", "grace_period"], min_length=1)  # or `any`
    active_only: bool = True
    persons_only: bool = False
    member_types: list[str] = []     # names or UniqueIDs; empty = any type
    groups: list[str] = []           # names or UniqueIDs; empty = no group needed
    committees: list[str] = []       # names or UniqueIDs: a current seat on any of them (StartDate ≤ now < EndDate)
    positions: list[str] = []        # ... in one of these positions (Chair, Treasurer…); empty = any position
    # People on the list holding a current seat in one of these positions are made its
    # moderators; moderators this tool made are unmade when they no longer hold one (never others).
    moderators_from_positions: list[str] = []
    custom_fields: dict[str, list[str]] = {}      # field name → values; each field must hold one of its values
    custom_fields_not: dict[str, list[str]] = {}  # field name → values that keep a member off
    # The people a member company names as its primary or billing contact (`all`: every person
    # whose parent it is), judged by the company's status and activity, not their own.
    contacts_of_companies: list[CompanyContact] = []
    # People whose membership comes from a company (MemberStatus inheriting, or a parent company
    # in the rule's statuses): `include` counts them as members while the company is one;
    # `exclude` keeps anyone inheriting off; unset, their own status decides (as before).
    inheriting: Literal["include", "exclude"] | None = None
    exclude_opted_out: bool = True   # Novi's UnsubscribeFromEmails
    lapsed: LapsePolicy = LAPSE_UNSUBSCRIBE
    scope: Scope = SCOPE_MANAGED
    protected: list[str] = []        # addresses never removed or held
    update_names: bool = True
    # A membership held through a Mailman account (Postorius) shows the name its owner chose
    # there; correcting it renames the account, on every list and in Postorius: only if asked.
    update_account_names: bool = False
    send_welcome: bool = False
    send_goodbye: bool = False
    allow_empty: bool = False        # an empty eligible set is an error unless this is true
    digest: DigestSettings | None = None  # tell the list's people what each run changed
    # A member who left the list by themselves is not re-added: `respect` (always),
    # `until_renewal` (until their membership expiry moves on), `override` (compulsory lists).
    self_unsubscribe: SelfUnsubscribe = SELF_RESPECT
    # Guards, checked before any write (an operator lifts them for one run with --override-guards):
    max_removals: int = Field(default=500, ge=0)              # unsubscribes + holds in one run
    max_removal_share: float = Field(default=0.2, ge=0, le=1)  # ... as a share of the managed members,
    removal_share_from: int = Field(default=10, ge=0)          # ... once there are more removals than this
    max_eligible_drop: float = Field(default=0.25, ge=0, le=1)  # eligible vs the last completed run
    max_roster_drop: float = Field(default=0.25, ge=0, le=1)    # remembered members missing from the roster

    @field_validator("list_id")
    @classmethod
    def _dot_form(cls, value: str) -> str:
        return dot_list_id(value)

    @field_validator("statuses", "member_types", "groups", "committees", "positions", "moderators_from_positions")
    @classmethod
    def _casefold(cls, values: list[str] | str) -> list[str] | str:
        if isinstance(values, str):  # statuses: any
            return values
        cleaned = [v.strip().casefold() for v in values]
        if any(not v for v in cleaned):
            raise ValueError("empty names are not allowed")
        return cleaned

    @field_validator("custom_fields", "custom_fields_not")
    @classmethod
    def _field_values(cls, fields: dict[str, list[str]]) -> dict[str, list[str]]:
        """Field names as Novi shows them (matched without regard to case), each with its values."""
        cleaned = {name.strip(): [str(v).strip().casefold() for v in values] for name, values in fields.items()}
        if any(not name or not values or any(not v for v in values) for name, values in cleaned.items()):
            raise ValueError("each custom field needs a name and at least one non-empty value")
        return cleaned

    @field_validator("contacts_of_companies", mode="before")
    @classmethod
    def _one_or_more(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _positions_need_committees(self) -> ListRule:
        if (self.positions or self.moderators_from_positions) and not self.committees:
            raise ValueError("positions and moderators_from_positions are seats on committees: name the committees too")
        if self.contacts_of_companies and self.inheriting == "include":
            raise ValueError("inheriting: include judges a person's own membership, and contacts_of_companies "
                             "judges their company's instead: give one of the two")
        return self

    @field_validator("protected")
    @classmethod
    def _addresses(cls, values: list[str]) -> list[str]:
        cleaned = [v.strip().casefold() for v in values]
        bad = [v for v in cleaned if v.count("@") != 1]
        if bad:
            raise ValueError(f"{len(bad)} protected entries are not email addresses")
        return cleaned


class Rules(_Strict):
    """The whole rules file: Novi settings, defaults shared by every list, and the lists."""

    novi: NoviSettings = NoviSettings()
    ledger: LedgerSettings = LedgerSettings()
    lists: list[ListRule] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: object) -> object:
        if isinstance(data, dict) and "defaults" in data:
            data = dict(data)
            defaults = data.pop("defaults") or {}
            if not isinstance(defaults, dict):
                raise ValueError("defaults must be a mapping of list settings")
            if "list_id" in defaults:
                raise ValueError("defaults cannot set list_id")
            lists = data.get("lists")
            if isinstance(lists, list):
                data["lists"] = [{**defaults, **item} if isinstance(item, dict) else item for item in lists]
        return data

    @model_validator(mode="after")
    def _unique_lists(self) -> Rules:
        repeated = sorted(i for i, n in Counter(rule.list_id for rule in self.lists).items() if n > 1)
        if repeated:
            raise ValueError(f"lists appear more than once: {', '.join(repeated)}")
        return self


def parse_rules(data: object, source: str = "rules") -> Rules:
    """Validate rules given as plain data; every problem is listed in one `RulesError`."""
    try:
        return Rules.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors())
        raise RulesError(f"{source} is not valid: {problems}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice: the last one would win silently
    (`send_goodbye: false` then `true` means goodbye mail; a second `lists:` drops the first)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise RulesError(f"the key {str(key)[:60]!r} appears twice in one mapping (line "
                                 f"{key_node.start_mark.line + 1}); give it once")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_rules(path: str | Path) -> Rules:
    """Read and validate a YAML rules file; any way it can be unreadable is one `RulesError`."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a safe loader
    except FileNotFoundError:
        where = "" if path.is_absolute() else f" (in {Path.cwd()})"
        raise RulesError(f"rules file {path} does not exist{where}: copy rules.example.yaml to it and name your "
                         "lists, or give another rules_path") from None
    except IsADirectoryError:
        raise RulesError(f"rules file {path} is a directory, not a file") from None
    except UnicodeDecodeError:
        raise RulesError(f"rules file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise RulesError(f"rules file {path} cannot be read ({exc.strerror or type(exc).__name__})") from None
    except RulesError as exc:
        raise RulesError(f"rules file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise RulesError(f"rules file {path} is not valid YAML: {str(exc)[:300]}") from None
    except RecursionError:
        raise RulesError(f"rules file {path} nests too deep to be a rules file") from None
    except ValueError as exc:  # e.g. an integer of thousands of digits (Python's int limit)
        raise RulesError(f"rules file {path} holds a value that cannot be read: {str(exc)[:120]}") from None
    return parse_rules(data, str(path))


def single_list_rules(list_id: str) -> Rules:
    """The shortcut for the simple case: one list, every default."""
    return parse_rules({"lists": [{"list_id": list_id}]}, f"--list {list_id}")


def resolve_rules(rules_path: str | None, list_id: str | None) -> Rules:
    """The rules file, or the one-list shortcut; exactly one of the two."""
    if bool(rules_path) == bool(list_id):
        raise RulesError("give either a rules file or a single list id, not both and not neither")
    return load_rules(rules_path) if rules_path else single_list_rules(list_id)
