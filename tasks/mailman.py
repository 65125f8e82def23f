"""GNU Mailman 3 core: the REST client, roster extraction and the batched writes.

Every fact here was measured on a real core (reference/mailman-rest.md): dot-form list ids,
`count` and `page` always together, a missing `entries` on an empty page, 409 for an existing
member, 202 for a pending request, and a case-sensitive mass unsubscribe.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from urllib.parse import quote

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run

from tasks.core import addresses
from tasks.core.notices import LIST_SETTINGS
from tasks.core.schema import (
    REGULAR,
    REQUEST_COLUMNS,
    ROSTER_COLUMNS,
    Action,
    Delivery,
    TOOK,
    Outcome,
    dot_list_id,
)
from tasks.errors import ListNotFound, SyncError, UnexpectedResponse, UnsupportedMailman
from tasks.http import ApiSession, json_body
from tasks.paging import Numbers, Page, sweep
from tasks.retry import retry_if_transient

# The oldest core the tool works with, and why: subscribing with a `delivery_mode` and a
# `delivery_status`, and `members/find` by delivery status, came in Mailman 3.3.4 (its NEWS).
# The oldest the tests run against: 3.3.8 (Debian 12's; the oldest that runs on Python 3.11).
OLDEST_MAILMAN = (3, 3, 4)
OLDEST_TESTED = (3, 3, 8)
NEEDS_OLDEST = "subscribing with a member's digest and delivery settings, and finding members by delivery status"
ROSTER_PAGE_SIZE = 1000
# A roster's pages asked for at once (tasks.paging.sweep). Mailman's REST server runs two
# workers by default ([webservice] workers: 2); measured in `python -m bench.roster_read`.
ROSTER_PAGES_IN_FLIGHT = 2
READ_RETRIES = 3  # reads only; writes are retried per batch (apply_batch)
HELD = Delivery.BY_MODERATOR
# What a roster read asks for: `fields=` trims each entry (~5x faster reads). It brings
# `moderation_action` (a column of the member: free; left out when unset) but not
# `delivery_mode`, which Mailman resolves member by member through the preferences: measured
# at 100,000 members, 1.38x the read (100 s against 72 s on a loaded machine). That and a
# delivery the member stopped themselves are read only for the members a plan removes, holds
# or moves (`preferences`): a few hundred on a day of churn, bounded by the removal guard.
ROSTER_FIELDS = ("email", "display_name", "member_id", "moderation_action", "subscription_mode", "user")
# Whose delivery Mailman disabled after bounces: one search per list (members/find, which
# Mailman answers by looking at every member: 0.42x a roster read), as the report lists them all.
ALWAYS_FOUND = (Delivery.BY_BOUNCES,)
FIND_BUCKET = {Delivery.BY_MODERATOR: "held_page", Delivery.BY_BOUNCES: "bouncing_page",
               Delivery.BY_USER: "stopped_page"}


def rest_base(rest_url: str) -> str:
    """The REST root given with or without `/3.1`, always ending in `/3.1`."""
    url = rest_url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError("the Mailman REST URL must start with http:// or https://")
    return url if url.endswith("/3.1") else f"{url}/3.1"


def _page(response, what: str) -> Page:
    """A Mailman collection page; Mailman leaves `entries` out of an empty page (not `[]`)."""
    body = json_body(response, f"Mailman {what}")
    if not isinstance(body, dict) or not isinstance(body.get("total_size"), int):
        raise UnexpectedResponse(f"Mailman {what}: the answer has no total_size")
    entries = body.get("entries", [])
    if not isinstance(entries, list):
        raise UnexpectedResponse(f"Mailman {what}: entries is not a list")
    return Page(body["total_size"], entries)


def roster_frame(list_id: str, entries: list[dict], delivery: dict[str, str]) -> pd.DataFrame:
    """A roster frame (tasks.core.schema.ROSTER_COLUMNS) from member entries and the delivery
    status found for some member ids (the rest read `enabled`: no search found them). An
    entry without `delivery_mode` leaves it missing: its preferences were not read (see
    `with_preferences`). Mailman stores addresses lower-cased."""
    email = pd.Series([e["email"] for e in entries], dtype="string").str.lower()
    member_ids = [str(e.get("member_id", "")) for e in entries]
    return pd.DataFrame({
        "list_id": pd.Series([list_id] * len(entries), dtype="string"),
        "email": email,
        "match_key": addresses.match_key(email),
        "display_name": pd.Series([e.get("display_name") or "" for e in entries], dtype="string"),
        "member_id": pd.Series(member_ids, dtype="string"),
        "delivery_mode": pd.Series([e.get("delivery_mode") for e in entries], dtype="string"),
        "moderation_action": pd.Series([e.get("moderation_action") or "" for e in entries], dtype="string"),
        "delivery_status": pd.Series([delivery.get(m, Delivery.ENABLED) for m in member_ids], dtype="string"),
        "account": pd.Series([_account(e) for e in entries], dtype="string"),
    }, columns=ROSTER_COLUMNS)


def _account(entry: dict) -> str | None:
    """The user id a membership is held through (`subscription_mode: as_user`, how Postorius
    subscribes a signed-up member), else None. Every address has a user; only these memberships
    show the user's name."""
    if entry.get("subscription_mode") != "as_user" or not isinstance(entry.get("user"), str):
        return None
    return entry["user"].rstrip("/").rpartition("/")[2] or None


def no_list(list_id: str) -> ListNotFound:
    return ListNotFound(f"Mailman has no list {list_id}: create it, or correct its list_id in the rules")


def _version_tuple(version: str) -> tuple[int, ...]:
    """`3.3.10` → (3, 3, 10); a suffix such as `3.3.9rc1` counts by its numbers."""
    numbers = re.findall(r"\d+", version)
    if not numbers:
        raise UnexpectedResponse(f"Mailman's version is not a version: {version[:40]!r}")
    return tuple(int(n) for n in numbers[:3])


def untested(version: str) -> bool:
    """Whether a supported core is older than the oldest the tests run against."""
    return _version_tuple(version) < OLDEST_TESTED


class MailmanClient:
    """One Mailman core, one admin login, one HTTP session."""

    def __init__(self, rest_url: str, user: str, password: str, *,
                 timeout: tuple[float, float] | None = None, sleep=None,
                 pages_in_flight: int = ROSTER_PAGES_IN_FLIGHT) -> None:
        self.pages_in_flight = pages_in_flight
        extra: dict = {"timeout": timeout} if timeout else {}
        if sleep is not None:
            extra["sleep"] = sleep
        self.http = ApiSession(rest_base(rest_url), headers={}, auth=(user, password),
                               system="Mailman", read_retries=READ_RETRIES, **extra)

    def __repr__(self) -> str:
        return f"MailmanClient({self.http.base_url})"

    # reads -------------------------------------------------------------------------------
    def version(self) -> str:
        body = json_body(self.http.request("GET", "system/versions", bucket="mailman_read"), "Mailman versions")
        if not isinstance(body, dict) or "mailman_version" not in body:
            raise UnexpectedResponse("Mailman /system/versions: no mailman_version in the answer")
        return str(body["mailman_version"])

    def supported_version(self) -> str:
        """Mailman's version, or UnsupportedMailman for a core older than `OLDEST_MAILMAN`."""
        version = self.version()
        if _version_tuple(version) < OLDEST_MAILMAN:
            oldest = ".".join(map(str, OLDEST_MAILMAN))
            raise UnsupportedMailman(f"Mailman {version} is older than {oldest}, the oldest this tool works with "
                                     f"({NEEDS_OLDEST} need {oldest}): upgrade the Mailman core")
        return version

    # reads -------------------------------------------------------------------------------
    def _pages(self, path: str, what: str, *, bucket: str, page_size: int = 100, params: Sequence = (),
               missing: SyncError | None = None, in_flight: int = 1) -> Iterator[list]:
        """The one reader of a Mailman collection (as mailmanclient's `Page`): each page's entries
        through the one sweep (tasks.paging: stop rules, count checks); a 404 is `missing`."""
        def fetch(paging: dict) -> Page:
            response = self.http.request("GET", path, bucket=bucket, params=[*params, *paging.items()],
                                         accept=(404,) if missing else ())
            if missing is not None and response.status_code == 404:
                raise missing
            return _page(response, what)
        return (entries for _, entries in sweep(fetch, Numbers(page_size), f"Mailman {what}", in_flight))

    def _entries(self, path: str, what: str, *, needs: Sequence[str] = ("email",), **read) -> list[dict]:
        """Every entry of a collection, each checked to carry `needs` as text."""
        entries = [e for page in self._pages(path, what, **read) for e in page]
        if not all(isinstance(e, dict) and all(isinstance(e.get(key), str) for key in needs) for e in entries):
            raise UnexpectedResponse(f"Mailman {what}: an entry has no {' or '.join(needs)}")
        return entries

    def list_ids(self) -> list[str]:
        """Every list on the server, by dot-form id."""
        return [e["list_id"] for e in self._entries("lists", "list of lists", needs=("list_id",),
                                                    bucket="mailman_read")]

    def settings(self, list_id: str) -> dict[str, object]:
        """The list's settings that decide whom Mailman mails by itself (tasks.core.notices)."""
        response = self.http.request("GET", f"lists/{list_id}/config", bucket="mailman_read", accept=(404,))
        if response.status_code == 404:
            raise no_list(list_id)
        body = json_body(response, f"{list_id}'s settings")
        if not isinstance(body, dict):
            raise UnexpectedResponse(f"Mailman {list_id}'s settings: not an object")
        return {name: body.get(name) for name in LIST_SETTINGS}

    def owners(self, list_id: str) -> list[str]:
        """The list's owners' addresses (who a change digest goes to by default)."""
        return sorted({e["email"].lower() for e in self._entries(f"lists/{list_id}/roster/owner",
                                                                 f"{list_id}'s owners", bucket="mailman_read")})

    def moderators(self, list_id: str) -> pd.DataFrame:
        """The list's moderators (role=moderator, a roster of its own): email, match_key, member_id."""
        entries = self._entries(f"lists/{list_id}/roster/moderator", f"{list_id}'s moderators", bucket="mailman_read")
        email = pd.Series([e["email"].lower() for e in entries], dtype="string")
        return pd.DataFrame({"email": email, "match_key": addresses.match_key(email),
                             "member_id": pd.Series([str(e.get("member_id") or "") for e in entries], dtype="string")})

    def add_moderator(self, list_id: str, email: str, display_name: str) -> tuple[str, str]:
        """Make the address a moderator of the list (201; 409: it already is). No mail is sent."""
        response = self.http.request("POST", "members", bucket=Action.MODERATE, accept=(400, 409), data={
            "list_id": list_id, "subscriber": email, "display_name": display_name, "role": "moderator",
            "pre_verified": "true", "pre_confirmed": "true", "pre_approved": "true"})
        if response.status_code == 409:
            return Outcome.ALREADY, self.http.reason(response)
        if response.status_code == 400:
            return Outcome.FAILED, self.http.reason(response) or "Mailman refused the moderator"
        return Outcome.APPLIED, ""

    def remove_moderator(self, list_id: str, email: str) -> tuple[str, str]:
        """Take the moderator role from the address (its list membership, if any, stays)."""
        response = self.http.request("DELETE", f"lists/{list_id}/moderator/{quote(email.lower(), safe='')}",
                                     bucket=Action.UNMODERATE, accept=(404,))
        if response.status_code == 404:
            return Outcome.ALREADY, "not a moderator"
        return Outcome.APPLIED, ""

    def roster(self, list_id: str, page_size: int = ROSTER_PAGE_SIZE, *, with_held: bool = True) -> pd.DataFrame:
        """The list's members (role=member) as a roster frame, with their preferences.

        Who stopped delivery by themselves or had it disabled by bounces is found with one
        search each (`ALWAYS_FOUND`); who is held too when `with_held`. Without it, a held
        member reads as `enabled`: Mailman answers each search by looking at every member, and
        holds matter only where the rule holds lapsed members.
        """
        list_id = dot_list_id(list_id)
        pages = self._pages(f"lists/{list_id}/roster/member", f"roster of {list_id}", bucket="roster_page",
                            page_size=page_size, params=[("fields", f) for f in ROSTER_FIELDS],
                            missing=no_list(list_id), in_flight=self.pages_in_flight)
        statuses = (*ALWAYS_FOUND, *((HELD,) if with_held else ()))
        entries: list = []
        with ThreadPoolExecutor(len(statuses), thread_name_prefix="search") as pool:
            searches: dict[str, Future] = {}
            for page in pages:
                # The searches run beside the pages, once the first page shows the list is not empty.
                searches = searches or {s: pool.submit(self.member_ids_with, list_id, s, page_size) for s in statuses}
                entries += page
            delivery = {member_id: status for status, search in searches.items() for member_id in search.result()}
        if not all(isinstance(e, dict) and isinstance(e.get("email"), str) and e["email"].count("@") == 1
                   for e in entries):
            raise UnexpectedResponse(f"Mailman roster of {list_id}: an entry has no usable email")
        return roster_frame(list_id, entries, delivery)

    def membership(self, list_id: str, emails: Iterable[str]) -> pd.DataFrame:
        """The roster rows of exactly these addresses (a one-member sync reads no whole roster).

        Each address is read as the list's `member/{address}` resource: an exact lookup.
        `members/find?subscriber=` is not: Mailman reads `*` there as a wildcard over addresses
        and display names, so `*@example.org` would return the whole domain. An answer for any
        other address than the one asked is refused, never planned from. An address holding a
        `*` is not asked at all: `member/{address}` answers 500 for it (measured on 3.3.10), and
        such a record is quarantined (tasks.core.addresses), so no plan needs its row.
        """
        list_id = dot_list_id(list_id)
        entries, delivery = [], {}
        for email in sorted({e.lower() for e in emails if "*" not in e}):
            response = self.http.request("GET", f"lists/{list_id}/member/{quote(email, safe='')}",
                                         bucket="member_lookup", accept=(404,))
            if response.status_code == 404:
                continue  # not a member of this list
            entry = json_body(response, "list member")
            if not isinstance(entry, dict) or not isinstance(entry.get("email"), str) \
                    or entry["email"].lower() != email or not entry.get("member_id"):
                raise UnexpectedResponse(f"Mailman lists/{list_id}/member: the answer is not the member asked for")
            member_id = str(entry["member_id"])
            mode, status = self.preferences(member_id, bucket="member_lookup")
            if status is None:
                continue  # unsubscribed between the two reads
            delivery[member_id] = status
            entries.append({**entry, "delivery_mode": mode})
        return roster_frame(list_id, entries, delivery)

    def preferences(self, member_id: str, bucket: str = "preferences_read") -> tuple[str | None, str | None]:
        """A member's `delivery_mode` and `delivery_status` as Mailman resolves them (`all/`: the
        member's own preferences leave out what was set on the address or the user, such as a
        delivery stopped for every list)."""
        response = self.http.request("GET", f"members/{quote(member_id, safe='')}/all/preferences",
                                     bucket=bucket, accept=(404,))
        if response.status_code == 404:  # gone since the roster was read: the change finds out
            return None, None
        prefs = json_body(response, "preferences")
        if not isinstance(prefs, dict) or not isinstance(prefs.get("delivery_status"), str):
            raise UnexpectedResponse("Mailman preferences: no delivery_status in the answer")
        return str(prefs.get("delivery_mode") or REGULAR), prefs["delivery_status"]

    def bans(self, list_id: str | None = None) -> list[str]:
        """The list's bans (or, without a list, the global ones): addresses, and patterns
        starting with `^`. Mailman refuses to subscribe a banned address (400, every run)."""
        path = "bans" if list_id is None else f"lists/{dot_list_id(list_id)}/bans"
        what = "global bans" if list_id is None else f"bans of {list_id}"
        return [e["email"] for e in self._entries(path, what, bucket="ban_page", page_size=ROSTER_PAGE_SIZE)]

    def subscription_requests(self, list_id: str) -> pd.DataFrame:
        """The list's pending subscription requests (tasks.core.schema.REQUEST_COLUMNS): who asked,
        the token, and whose move it is (`moderator`, or `subscriber` for a confirmation)."""
        list_id = dot_list_id(list_id)
        entries = self._entries(f"lists/{list_id}/requests", f"requests of {list_id}", needs=("email", "token"),
                                bucket="request_page", page_size=ROSTER_PAGE_SIZE)
        wanted = [e for e in entries if e.get("type") == "subscription"]
        return pd.DataFrame({"match_key": addresses.match_key(pd.Series([e["email"] for e in wanted], dtype="string")),
                             "token": pd.Series([e["token"] for e in wanted], dtype="string"),
                             "owner": pd.Series([str(e.get("token_owner")) for e in wanted], dtype="string")},
                            columns=REQUEST_COLUMNS)

    def member_ids_with(self, list_id: str, delivery_status: str, page_size: int = ROSTER_PAGE_SIZE) -> set[str]:
        """The ids of the list's members in one delivery status; the roster itself does not say."""
        query = [("list_id", list_id), ("role", "member"), ("delivery_status", delivery_status)]
        return {str(e.get("member_id")) for page in self._pages(
            "members/find", f"members/find ({delivery_status} members of {list_id})", bucket=FIND_BUCKET[delivery_status],
            page_size=page_size, params=query) for e in page}

    # writes ------------------------------------------------------------------------------
    def discard_request(self, list_id: str, token: str) -> None:
        """Take a pending subscription request off the moderator's queue, silently (measured on
        3.3.10: 204, no mail; `accept` would send the list's welcome). 404: already gone."""
        self.http.request("POST", f"lists/{list_id}/requests/{quote(token, safe='')}", bucket="request_resolve",
                          data={"action": "discard"}, accept=(404,))

    def subscribe(self, list_id: str, address: str, display_name: str, *, welcome: bool,
                  delivery_mode: str = REGULAR, delivery_status: str = Delivery.ENABLED) -> tuple[str, str]:
        """Subscribe pre-verified, pre-confirmed and pre-approved, so nobody is mailed a confirmation.

        A digest reader's `delivery_mode`, and a delivery the member stopped themselves, are
        given with the subscribe (Mailman 3.3.4+); Mailman's defaults are not sent."""
        data = {"list_id": list_id, "subscriber": address, "display_name": display_name,
                "pre_verified": "true", "pre_confirmed": "true", "pre_approved": "true",
                "send_welcome_message": "true" if welcome else "false"}
        if delivery_mode != REGULAR:
            data["delivery_mode"] = delivery_mode
        if delivery_status != Delivery.ENABLED:
            data["delivery_status"] = delivery_status
        response = self.http.request("POST", "members", bucket=Action.SUBSCRIBE, data=data, accept=(400, 409))
        if response.status_code == 201:
            return Outcome.APPLIED, ""
        if response.status_code == 202:
            return Outcome.PENDING, "Mailman holds a subscription request: not a member until approved"
        reason = self.http.reason(response)
        if response.status_code == 409:
            # Mailman's "Subscription request already pending"; any wording with the word: a
            # pending request taken for "already a member" would be remembered as a member.
            if re.search(r"\bpending\b", reason, re.IGNORECASE):
                return Outcome.PENDING, reason
            return Outcome.ALREADY, reason
        return Outcome.FAILED, reason or "Mailman refused the address"

    def unsubscribe_many(self, list_id: str, emails: Sequence[str]) -> dict[str, bool]:
        """Mass unsubscribe: no goodbye mail, no moderation; False = was not a member."""
        lowered = [e.lower() for e in emails]  # the call compares case-sensitively
        response = self.http.request("DELETE", f"lists/{list_id}/roster/member", bucket="mass_unsubscribe",
                                     json={"emails": lowered})
        body = json_body(response, "mass unsubscribe")
        if not isinstance(body, dict):
            raise UnexpectedResponse("Mailman mass unsubscribe: the answer is not an object")
        return {e: bool(body[e]) for e in lowered if e in body}

    def unsubscribe_one(self, list_id: str, email: str) -> tuple[str, str]:
        """One unsubscribe that lets Mailman send its goodbye mail (the list's rule asked for it)."""
        response = self.http.request("DELETE", f"lists/{list_id}/member/{quote(email.lower(), safe='')}",
                                     bucket=Action.UNSUBSCRIBE, data={"pre_approved": "true"}, accept=(404,))
        if response.status_code == 404:
            return Outcome.ALREADY, "not a member"
        if response.status_code == 202:
            return Outcome.PENDING, "Mailman holds the unsubscription for moderation"
        return Outcome.APPLIED, ""

    def moderate(self, list_id: str, email: str, moderation_action: str) -> tuple[str, str]:
        """Set the member's moderation action (`hold`, `reject`, `discard`, `accept`, `defer`):
        a PATCH of the member, which is looked up by address (the subscribe's 201 has no body)."""
        path = f"lists/{list_id}/member/{quote(email.lower(), safe='')}"
        response = self.http.request("GET", path, bucket="member_lookup", accept=(404,))
        if response.status_code == 404:
            return Outcome.FAILED, "the member is no longer on the list"
        entry = json_body(response, "list member")
        if not isinstance(entry, dict) or not entry.get("member_id"):
            raise UnexpectedResponse(f"Mailman {path}: the answer has no member_id")
        response = self.http.request("PATCH", f"members/{quote(str(entry['member_id']), safe='')}",
                                     bucket="moderation_action", data={"moderation_action": moderation_action},
                                     accept=(400, 404))
        if response.status_code != 204 and response.status_code >= 400:
            return Outcome.FAILED, self.http.reason(response) or "Mailman refused the moderation action"
        return Outcome.APPLIED, ""

    def rename(self, email: str, display_name: str, account: str | None = None) -> tuple[str, str]:
        """Set the address's display name (PATCH on the member itself answers 400); for a
        membership held through an account, the account's, which is what the roster shows."""
        where = f"users/{quote(account, safe='')}" if account else f"addresses/{quote(email, safe='')}"
        response = self.http.request("PATCH", where, bucket=Action.RENAME,
                                     data={"display_name": display_name}, accept=(400, 404))
        if response.status_code == 404:
            return Outcome.FAILED, "the address is no longer known to Mailman"
        if response.status_code == 400:
            return Outcome.FAILED, self.http.reason(response) or "Mailman refused the name"
        return Outcome.APPLIED, ""

    def set_delivery(self, member_id: str, delivery_status: str) -> tuple[str, str]:
        """Hold (`by_moderator`) or release (`enabled`) delivery without unsubscribing."""
        response = self.http.request("PATCH", f"members/{quote(member_id, safe='')}/preferences",
                                     bucket=Action.HOLD if delivery_status == HELD else Action.RELEASE,
                                     data={"delivery_status": delivery_status}, accept=(400, 404))
        if response.status_code == 400:
            return Outcome.FAILED, self.http.reason(response) or "Mailman refused the delivery change"
        if response.status_code == 404:
            return Outcome.FAILED, "the member is no longer on the list"
        return Outcome.APPLIED, ""


@task(name="extract-roster", task_run_name="read roster {list_id}", cache_policy=NO_CACHE)  # its reads retry themselves (tasks.http)
def extract_roster(client: MailmanClient, list_id: str, with_held: bool = True) -> pd.DataFrame:
    """Read one list's whole roster (and its held members, `with_held`); a partial read raises."""
    return client.roster(list_id, with_held=with_held)


@task(name="read-preferences", cache_policy=NO_CACHE)
def read_preferences(client: MailmanClient, wanting: pd.DataFrame) -> pd.DataFrame:
    """The preferences of the members a plan wants them for (`Plan.wanting`): list_id,
    member_id, delivery_mode, delivery_status. One call each, as many at once as a roster's
    pages (Mailman serves them on its workers side by side)."""
    with ThreadPoolExecutor(client.pages_in_flight, thread_name_prefix="preferences") as pool:
        read = list(pool.map(client.preferences, wanting["member_id"]))
    return wanting[["list_id", "member_id"]].assign(delivery_mode=[r[0] for r in read],
                                                   delivery_status=[r[1] for r in read])


def with_preferences(rosters: dict[str, pd.DataFrame], read: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The rosters with the preferences read for some of their members filled in."""
    out = {}
    for list_id, roster in rosters.items():
        mine = read.loc[read["list_id"] == list_id].set_index("member_id")
        if mine.empty:
            out[list_id] = roster
            continue
        known = roster["member_id"].map(mine["delivery_mode"])
        out[list_id] = roster.assign(
            delivery_mode=roster["delivery_mode"].fillna(known.astype("string")),
            delivery_status=roster["delivery_status"].where(known.isna(),
                                                            roster["member_id"].map(mine["delivery_status"]))
            .astype("string"))
    return out


@task(name="extract-settings", cache_policy=NO_CACHE)
def extract_settings(client: MailmanClient, list_ids: list[str]) -> dict[str, dict]:
    """Each list's settings that decide whom Mailman mails by itself (tasks.core.notices)."""
    return {list_id: client.settings(list_id) for list_id in list_ids}


@task(name="extract-bans", cache_policy=NO_CACHE)
def extract_bans(client: MailmanClient, list_ids: list[str]) -> dict[str, list[str]]:
    """Per list, the bans that apply to it: its own and the global ones (one read each, and
    one for the global bans)."""
    return read_bans(client, list_ids)


@task(name="extract-requests", cache_policy=NO_CACHE)
def extract_requests(client: MailmanClient, list_ids: list[str]) -> dict[str, pd.DataFrame]:
    """Per list, its pending subscription requests (one read each)."""
    return read_requests(client, list_ids)


def read_requests(client: MailmanClient, list_ids: list[str]) -> dict[str, pd.DataFrame]:
    return {list_id: client.subscription_requests(list_id) for list_id in list_ids}


def read_bans(client: MailmanClient, list_ids: list[str]) -> dict[str, list[str]]:
    everywhere = client.bans()
    return {list_id: [*client.bans(list_id), *everywhere] for list_id in list_ids}


def apply_changes(client: MailmanClient, action: str, changes: Iterable[dict]) -> list[dict]:
    """Apply one batch of same-kind changes; the outcome of each, in order.

    Each change carries `list_id`, `email`, `display_name`, `member_id` and `mail` (whether the
    list's rule wants Mailman's welcome or goodbye mail). A change Mailman refuses (400) is a
    failed row with Mailman's reason and the batch goes on; a transient failure raises, so the
    whole batch is retried (every write is idempotent).
    """
    rows = list(changes)
    if action == Action.UNSUBSCRIBE and rows and not rows[0]["mail"]:
        lists = {r["list_id"] for r in rows}
        if len(lists) != 1 or any(r["mail"] for r in rows):
            raise ValueError("a mass unsubscribe batch must hold one list without goodbye mail")
        answer = client.unsubscribe_many(rows[0]["list_id"], [r["email"] for r in rows])
        results = []
        for r in rows:
            done = answer.get(r["email"].lower())
            results.append((Outcome.APPLIED, "") if done else (Outcome.ALREADY, "not a member") if done is False
                           else (Outcome.FAILED, "Mailman did not answer for this address"))
    else:
        one = {
            Action.SUBSCRIBE: lambda r: subscribe(client, r),
            Action.UNSUBSCRIBE: lambda r: client.unsubscribe_one(r["list_id"], r["email"]),
            Action.RENAME: lambda r: client.rename(r["email"], r["display_name"] or "", r.get("account")),
            Action.HOLD: lambda r: client.set_delivery(r["member_id"], HELD),
            Action.RELEASE: lambda r: client.set_delivery(r["member_id"], "enabled"),
            Action.MODERATE: lambda r: client.add_moderator(r["list_id"], r["email"], r["display_name"] or ""),
            # No member id: the moderator was removed in Mailman already; the change only
            # records that this tool no longer answers for them (no call).
            Action.UNMODERATE: lambda r: client.remove_moderator(r["list_id"], r["email"]) if r["member_id"]
            else (Outcome.ALREADY, "no longer a moderator"),
        }.get(action)
        if one is None:
            raise ValueError(f"unknown action {action!r}")
        results = [one(r) for r in rows]
    return [{"email": r["email"], "outcome": o, "detail": d} for r, (o, d) in zip(rows, results)]


def subscribe(client: MailmanClient, change: dict) -> tuple[str, str]:
    """One subscribe; a moderator's pending request for the address is discarded first, or
    Mailman would answer 409 "Subscription request already pending" every run. The request
    created the address with the name the person typed (often none), and a subscribe keeps an
    existing address's name: it is set to Novi's at once, not by the next run."""
    name = change["display_name"] or ""
    if change.get("request"):
        client.discard_request(change["list_id"], change["request"])
    outcome = client.subscribe(change["list_id"], change["email"], name, welcome=change["mail"],
                               delivery_mode=change.get("delivery_mode") or REGULAR,
                               delivery_status=change.get("delivery_status") or Delivery.ENABLED)
    if outcome[0] not in TOOK:
        return outcome
    if outcome[0] == Outcome.APPLIED and change.get("request") and name:
        client.rename(change["email"], name)
    if change.get("moderation_action"):
        # Also after a 409: a retried batch finds the member its first attempt subscribed.
        moderated = client.moderate(change["list_id"], change["email"], change["moderation_action"])
        if moderated[0] != Outcome.APPLIED:
            return Outcome.FAILED, f"subscribed, but the moderation action was not restored: {moderated[1]}"
    return outcome


def batch_name() -> str:
    """A batch task run's name in the UI: its action, size and list ("unsubscribe 100 on members.example.org")."""
    params = task_run.parameters
    lists = sorted({change["list_id"] for change in params["changes"]})
    where = lists[0] if len(lists) == 1 else f"{len(lists)} lists"
    return f"{params['action']} {len(params['changes'])} on {where}"


@task(name="apply-batch", task_run_name=batch_name, retries=3, retry_delay_seconds=[2, 10, 30], retry_jitter_factor=0.5,
      retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def apply_batch(client: MailmanClient, action: str, changes: list[dict], lease=None, journal=None,
                batch: str | None = None) -> list[dict]:
    """One Prefect task per batch of changes (never per member): see `apply_changes`.

    `lease` (the run's hold on its lists, tasks.ledger.Lease) is checked first, on every attempt.
    `journal` (tasks.ledger.Journal) holds the batch as intended (`batch`, its key): what
    Mailman answered is marked there."""
    if lease is not None:
        lease.check()
    if journal is not None:  # nothing is sent that the ledger does not hold as intended
        journal.intend(batch, action, changes)
    results = apply_changes(client, action, changes)
    if journal is not None:
        journal.settled(batch, results)
    return results
