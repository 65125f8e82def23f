"""GNU Mailman 3 core: the REST client, roster extraction and the batched writes.

Every fact here was measured on a real core (reference/mailman-rest.md): dot-form list ids,
`count` and `page` always together, a missing `entries` on an empty page, 409 for an existing
member, 202 for a pending request, and a case-sensitive mass unsubscribe.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from urllib.parse import quote

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import addresses
from tasks.errors import ListNotFound, UnexpectedResponse
from tasks.http import ApiSession, json_body
from tasks.paging import numbered_pages
from tasks.retry import retry_if_transient

ROSTER_PAGE_SIZE = 1000
READ_RETRIES = 3  # reads only; writes are retried per batch (apply_batch)
ROSTER_COLUMNS = ["list_id", "email", "match_key", "display_name", "member_id", "held"]

# Outcomes of one change.
APPLIED, ALREADY, PENDING, FAILED = "applied", "already so", "pending", "failed"


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


def rest_base(rest_url: str) -> str:
    """The REST root given with or without `/3.1`, always ending in `/3.1`."""
    url = rest_url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError("the Mailman REST URL must start with http:// or https://")
    return url if url.endswith("/3.1") else f"{url}/3.1"


class MailmanClient:
    """One Mailman core, one admin login, one HTTP session."""

    def __init__(self, rest_url: str, user: str, password: str, *,
                 timeout: tuple[float, float] | None = None, sleep=None) -> None:
        extra: dict = {"timeout": timeout} if timeout else {}
        if sleep is not None:
            extra["sleep"] = sleep
        self.http = ApiSession(rest_base(rest_url), headers={}, auth=(user, password),
                               system="Mailman", read_retries=READ_RETRIES, **extra)

    def __repr__(self) -> str:
        return f"MailmanClient({self.http.base_url})"

    # reads -------------------------------------------------------------------------------
    def version(self) -> str:
        body = json_body(self.http.request("GET", "system/versions", kind="mailman_read"), "Mailman versions")
        if not isinstance(body, dict) or "mailman_version" not in body:
            raise UnexpectedResponse("Mailman /system/versions: no mailman_version in the answer")
        return str(body["mailman_version"])

    def list_ids(self) -> list[str]:
        """Every list on the server, by dot-form id."""
        def fetch(count: int, page: int) -> object:
            return json_body(self.http.request("GET", "lists", kind="mailman_read",
                                               params={"count": count, "page": page}), "Mailman lists")
        return [e["list_id"] for entries in numbered_pages(fetch, 100, "list of lists") for e in entries]

    def roster(self, list_id: str, page_size: int = ROSTER_PAGE_SIZE, *, with_held: bool = True) -> pd.DataFrame:
        """The list's members (role=member) as a roster frame, with who is held when `with_held`.

        Without it, `held` is False throughout and the held-member search is skipped: Mailman
        answers it by filtering every member (measured: 12 s for a 71,000-member list with none
        held, a third of reading that roster).
        """
        list_id = dot_list_id(list_id)

        def fetch(count: int, page: int) -> object:
            # fields= trims each entry to what the plan needs: ~5x faster reads.
            params = [("count", count), ("page", page), ("fields", "email"),
                      ("fields", "display_name"), ("fields", "member_id")]
            response = self.http.request("GET", f"lists/{list_id}/roster/member", kind="roster_page",
                                         params=params, accept=(404,))
            if response.status_code == 404:
                raise ListNotFound(f"Mailman has no list {list_id}: create it, or correct its list_id in the rules")
            return json_body(response, "roster")

        entries = [e for page in numbered_pages(fetch, page_size, f"roster of {list_id}") for e in page]
        if not all(isinstance(e, dict) and isinstance(e.get("email"), str) and e["email"].count("@") == 1
                   for e in entries):
            raise UnexpectedResponse(f"Mailman roster of {list_id}: an entry has no usable email")
        held = self.held_member_ids(list_id, page_size) if with_held else set()
        email = pd.Series([e.get("email") for e in entries], dtype="string").str.lower()
        member_id = pd.Series([str(e.get("member_id", "")) for e in entries], dtype="string")
        return pd.DataFrame({
            "list_id": pd.Series([list_id] * len(entries), dtype="string"),
            "email": email,
            "match_key": addresses.match_key(email),
            "display_name": pd.Series([e.get("display_name") or "" for e in entries], dtype="string"),
            "member_id": member_id,
            "held": member_id.isin(held).astype(bool),
        }, columns=ROSTER_COLUMNS)

    def membership(self, list_id: str, emails: Iterable[str]) -> pd.DataFrame:
        """The roster rows of exactly these addresses (a one-member sync reads no whole roster).

        Each address is read as the list's `member/{address}` resource: an exact lookup.
        `members/find?subscriber=` is not: Mailman reads `*` there as a wildcard over addresses
        and display names, so `*@example.org` would return the whole domain. An answer for any
        other address than the one asked is refused, never planned from. An address holding a
        `*` is not asked at all: `member/{address}` answers 500 for it (measured on 3.3.10), and
        such a record is quarantined (tasks.addresses), so no plan needs its row.
        """
        list_id = dot_list_id(list_id)
        rows = []
        for email in sorted({e.lower() for e in emails if "*" not in e}):
            response = self.http.request("GET", f"lists/{list_id}/member/{quote(email, safe='')}",
                                         kind="member_lookup", accept=(404,))
            if response.status_code == 404:
                continue  # not a member of this list
            entry = json_body(response, "list member")
            if not isinstance(entry, dict) or not isinstance(entry.get("email"), str) \
                    or entry["email"].lower() != email or not entry.get("member_id"):
                raise UnexpectedResponse(f"Mailman lists/{list_id}/member: the answer is not the member asked for")
            prefs = json_body(self.http.request("GET", f"members/{quote(str(entry['member_id']), safe='')}/preferences",
                                                kind="member_lookup"), "preferences")
            rows.append({"email": email, "display_name": entry.get("display_name") or "",
                         "member_id": str(entry["member_id"]),
                         "held": isinstance(prefs, dict) and prefs.get("delivery_status") == "by_moderator"})
        email = pd.Series([r["email"] for r in rows], dtype="string")
        return pd.DataFrame({
            "list_id": pd.Series([list_id] * len(rows), dtype="string"), "email": email,
            "match_key": addresses.match_key(email),
            "display_name": pd.Series([r["display_name"] for r in rows], dtype="string"),
            "member_id": pd.Series([r["member_id"] for r in rows], dtype="string"),
            "held": pd.Series([r["held"] for r in rows], dtype=bool),
        }, columns=ROSTER_COLUMNS)

    def held_member_ids(self, list_id: str, page_size: int = ROSTER_PAGE_SIZE) -> set[str]:
        """Members whose delivery is held (`by_moderator`); the roster itself does not say."""
        def fetch(count: int, page: int) -> object:
            params = {"list_id": list_id, "role": "member", "delivery_status": "by_moderator",
                      "count": count, "page": page}
            return json_body(self.http.request("GET", "members/find", kind="held_page", params=params),
                             "members/find")
        return {str(e.get("member_id")) for page in numbered_pages(fetch, page_size, f"held members of {list_id}")
                for e in page}

    def _description(self, response) -> str:
        """Mailman's reason for a refusal it answered on purpose (400, 409), redacted."""
        return self.http.reason(response) if response.content else ""

    # writes ------------------------------------------------------------------------------
    def subscribe(self, list_id: str, address: str, display_name: str, *, welcome: bool) -> tuple[str, str]:
        """Subscribe pre-verified, pre-confirmed and pre-approved, so nobody is mailed a confirmation."""
        data = {"list_id": list_id, "subscriber": address, "display_name": display_name,
                "pre_verified": "true", "pre_confirmed": "true", "pre_approved": "true",
                "send_welcome_message": "true" if welcome else "false"}
        response = self.http.request("POST", "members", kind="subscribe", data=data, accept=(400, 409))
        if response.status_code == 201:
            return APPLIED, ""
        if response.status_code == 202:
            return PENDING, "Mailman holds a subscription request: not a member until approved"
        reason = self._description(response)
        if response.status_code == 409:
            if "pending" in reason.lower():
                return PENDING, reason
            return ALREADY, reason
        return FAILED, reason or "Mailman refused the address"

    def unsubscribe_many(self, list_id: str, emails: Sequence[str]) -> dict[str, bool]:
        """Mass unsubscribe: no goodbye mail, no moderation; False = was not a member."""
        lowered = [e.lower() for e in emails]  # the call compares case-sensitively
        response = self.http.request("DELETE", f"lists/{list_id}/roster/member", kind="mass_unsubscribe",
                                     json={"emails": lowered})
        body = json_body(response, "mass unsubscribe")
        if not isinstance(body, dict):
            raise UnexpectedResponse("Mailman mass unsubscribe: the answer is not an object")
        return {e: bool(body[e]) for e in lowered if e in body}

    def unsubscribe_one(self, list_id: str, email: str) -> tuple[str, str]:
        """One unsubscribe that lets Mailman send its goodbye mail (the list's rule asked for it)."""
        response = self.http.request("DELETE", f"lists/{list_id}/member/{quote(email.lower(), safe='')}",
                                     kind="unsubscribe", data={"pre_approved": "true"}, accept=(404,))
        if response.status_code == 404:
            return ALREADY, "not a member"
        if response.status_code == 202:
            return PENDING, "Mailman holds the unsubscription for moderation"
        return APPLIED, ""

    def rename(self, email: str, display_name: str) -> tuple[str, str]:
        """Set the address's display name (PATCH on the member itself answers 400)."""
        response = self.http.request("PATCH", f"addresses/{quote(email, safe='')}", kind="rename",
                                     data={"display_name": display_name}, accept=(400, 404))
        if response.status_code == 404:
            return FAILED, "the address is no longer known to Mailman"
        if response.status_code == 400:
            return FAILED, self._description(response) or "Mailman refused the name"
        return APPLIED, ""

    def set_delivery(self, member_id: str, delivery_status: str) -> tuple[str, str]:
        """Hold (`by_moderator`) or release (`enabled`) delivery without unsubscribing."""
        response = self.http.request("PATCH", f"members/{quote(member_id, safe='')}/preferences",
                                     kind="hold" if delivery_status == "by_moderator" else "release",
                                     data={"delivery_status": delivery_status}, accept=(400, 404))
        if response.status_code == 400:
            return FAILED, self._description(response) or "Mailman refused the delivery change"
        if response.status_code == 404:
            return FAILED, "the member is no longer on the list"
        return APPLIED, ""


@task(name="extract-roster", cache_policy=NO_CACHE)  # its reads retry themselves (tasks.http)
def extract_roster(client: MailmanClient, list_id: str, with_held: bool = True) -> pd.DataFrame:
    """Read one list's whole roster (and its held members, `with_held`); a partial read raises."""
    return client.roster(list_id, with_held=with_held)


def apply_changes(client: MailmanClient, action: str, changes: Iterable[dict]) -> list[dict]:
    """Apply one batch of same-kind changes; the outcome of each, in order.

    Each change carries `list_id`, `email`, `display_name`, `member_id` and `mail` (whether the
    list's rule wants Mailman's welcome or goodbye mail). A change Mailman refuses (400) is a
    failed row with Mailman's reason and the batch goes on; a transient failure raises, so the
    whole batch is retried (every write is idempotent).
    """
    rows = list(changes)
    if action == "unsubscribe" and rows and not rows[0]["mail"]:
        lists = {r["list_id"] for r in rows}
        if len(lists) != 1 or any(r["mail"] for r in rows):
            raise ValueError("a mass unsubscribe batch must hold one list without goodbye mail")
        answer = client.unsubscribe_many(rows[0]["list_id"], [r["email"] for r in rows])
        results = []
        for r in rows:
            done = answer.get(r["email"].lower())
            results.append((APPLIED, "") if done else (ALREADY, "not a member") if done is False
                           else (FAILED, "Mailman did not answer for this address"))
    else:
        results = []
        for r in rows:
            if action == "subscribe":
                results.append(client.subscribe(r["list_id"], r["email"], r["display_name"] or "", welcome=r["mail"]))
            elif action == "unsubscribe":
                results.append(client.unsubscribe_one(r["list_id"], r["email"]))
            elif action == "rename":
                results.append(client.rename(r["email"], r["display_name"] or ""))
            elif action in ("hold", "release"):
                results.append(client.set_delivery(r["member_id"], "by_moderator" if action == "hold" else "enabled"))
            else:
                raise ValueError(f"unknown action {action!r}")
    return [{"email": r["email"], "outcome": o, "detail": d} for r, (o, d) in zip(rows, results)]


@task(name="apply-batch", retries=3, retry_delay_seconds=[2, 10, 30], retry_jitter_factor=0.5,
      retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def apply_batch(client: MailmanClient, action: str, changes: list[dict], lease=None) -> list[dict]:
    """One Prefect task per batch of changes (never per member): see `apply_changes`.

    `lease` (the run's hold on its lists, tasks.ledger.Lease) is checked first, on every attempt."""
    if lease is not None:
        lease.check()
    return apply_changes(client, action, changes)
