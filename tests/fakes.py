"""Stateful fakes of Novi and Mailman behind `responses`, for flow and CLI tests.

They follow reference/novi-api.md and reference/mailman-rest.md (status codes, envelopes,
a missing `entries` on empty pages, lower-cased storage), so a real run changes the fake
rosters and a second run can show that nothing is left to do.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from collections import Counter
from urllib.parse import parse_qs, unquote, urlsplit

import responses

NOVI_SITE = "https://novi.test"
MAILMAN_REST = "http://mailman.test:8001"


class InFlight:
    """A `responses` callback around `answer(query) -> body` that counts the requests in flight
    at once (`most`) and records each query in the order asked (`asked`)."""

    def __init__(self, answer, hold_s: float = 0.05) -> None:
        self.answer, self.hold_s = answer, hold_s
        self.lock, self.now, self.most, self.asked = threading.Lock(), 0, 0, []

    def __call__(self, request):
        query = {k: v[0] for k, v in parse_qs(urlsplit(request.url).query).items()}
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.asked.append(query)
        time.sleep(self.hold_s)  # long enough for the next request to be sent meanwhile
        with self.lock:
            self.now -= 1
        return 200, {}, json.dumps(self.answer(query))


class FakeNovi:
    def __init__(self, records: list[dict], cap: int = 1000) -> None:
        self.records = records
        self.cap = cap

    def install(self, mock: responses.RequestsMock) -> None:
        mock.add_callback("GET", re.compile(rf"{NOVI_SITE}/api/members(\?.*)?$"), callback=self._members)
        mock.add_callback("GET", re.compile(rf"{NOVI_SITE}/api/members/[^/?]+$"), callback=self._member)

    def _members(self, request):
        query = parse_qs(urlsplit(request.url).query)
        size = min(int(query["pageSize"][0]), self.cap)
        offset = int(query["offset"][0])
        records = self.records
        if "email" in query:  # Novi's filter: exact, any case
            records = [r for r in records if (r.get("Email") or "").lower() == query["email"][0].lower()]
        if "parentName" in query:  # the people of the company of that name (a guess: README "Routing")
            names = {str(r["UniqueID"]).lower(): (r.get("Name") or "").lower() for r in self.records}
            records = [r for r in records if names.get(str(r.get("ParentCustomerUniqueID")).lower())
                       == query["parentName"][0].lower()]
        body = {"TotalCount": len(records), "Results": records[offset:offset + size]}
        return 200, {"Content-Type": "application/json"}, json.dumps(body)

    def _member(self, request):
        wanted = unquote(urlsplit(request.url).path.rsplit("/", 1)[-1]).lower()
        for record in self.records:
            if str(record["UniqueID"]).lower() == wanted:
                return 200, {"Content-Type": "application/json"}, json.dumps(record)
        return 200, {}, ""  # Novi's "not found"


class FakeMailman:
    """Rosters as {list_id: {email: member}}; a member is {"display_name", "member_id",
    "delivery_status", "delivery_mode", "moderation_action"} (`new_member`)."""

    def __init__(self, rosters: dict[str, dict[str, str]]) -> None:
        self.rosters = {lid: {e.lower(): self.new_member(lid, e, n) for e, n in members.items()}
                        for lid, members in rosters.items()}
        self.writes: Counter = Counter()
        self.fail_subscribe: set[str] = set()   # addresses answered with 400
        self.unavailable_writes = 0             # the next N writes answer 503
        self.bans: dict[str | None, list[str]] = {}  # list id (None: global) → banned addresses
        self.requests: dict[str, list[dict]] = {}  # list id → pending {"email", "token", "token_owner"}
        self.version = "GNU Mailman 3.3.10 (Tom Sawyer)"
        self.settings: dict[str, dict] = {}  # list id → config values other than Mailman's defaults

    @staticmethod
    def new_member(list_id: str, email: str, name: str, **preferences: str) -> dict:
        return {"display_name": name, "member_id": f"m-{list_id}-{email.lower()}", "delivery_status": "enabled",
                "delivery_mode": "regular", "moderation_action": "", **preferences}

    def names(self, list_id: str) -> dict[str, str]:
        return {e: m["display_name"] for e, m in self.rosters[list_id].items()}

    def install(self, mock: responses.RequestsMock) -> None:
        base = re.escape(MAILMAN_REST) + "/3.1"
        mock.add_callback("GET", re.compile(rf"{base}/system/versions$"),
                          callback=lambda _: self._json(200, {"mailman_version": self.version}))
        mock.add_callback("GET", re.compile(rf"{base}/lists/([^/]+)/roster/member\?.*"), callback=self._roster)
        mock.add_callback("GET", re.compile(rf"{base}/lists/([^/]+)/config$"), callback=self._config)
        mock.add_callback("GET", re.compile(rf"{base}/members/find\?.*"), callback=self._find)
        mock.add_callback("GET", re.compile(rf"{base}/(lists/[^/]+/)?bans\?.*"), callback=self._bans)
        mock.add_callback("GET", re.compile(rf"{base}/lists/[^/]+/requests\?.*"), callback=self._requests)
        mock.add_callback("POST", re.compile(rf"{base}/lists/[^/]+/requests/[^/]+$"), callback=self._decide)
        mock.add_callback("GET", re.compile(rf"{base}/lists/([^/]+)/member/([^/?]+)$"), callback=self._member)
        mock.add_callback("GET", re.compile(rf"{base}/members/([^/]+)/all/preferences$"),
                          callback=self._get_preferences)
        mock.add_callback("POST", re.compile(rf"{base}/members$"), callback=self._subscribe)
        mock.add_callback("DELETE", re.compile(rf"{base}/lists/([^/]+)/roster/member$"), callback=self._mass_unsubscribe)
        mock.add_callback("PATCH", re.compile(rf"{base}/addresses/([^/]+)$"), callback=self._rename)
        mock.add_callback("PATCH", re.compile(rf"{base}/members/([^/]+)/preferences$"), callback=self._preferences)
        mock.add_callback("PATCH", re.compile(rf"{base}/members/([^/]+)$"), callback=self._patch_member)

    @staticmethod
    def _json(status, body=None):
        return status, {"Content-Type": "application/json"}, json.dumps(body) if body is not None else ""

    def _page(self, entries, request):
        query = parse_qs(urlsplit(request.url).query)
        count, page = int(query["count"][0]), int(query["page"][0])
        chunk = entries[(page - 1) * count: page * count]
        body = {"start": (page - 1) * count, "total_size": len(entries)}
        if chunk:  # Mailman leaves `entries` out of an empty page
            body["entries"] = chunk
        return self._json(200, body)

    def _config(self, request):
        list_id = urlsplit(request.url).path.split("/")[3]
        if list_id not in self.rosters:
            return self._json(404, {"title": "404 Not Found"})
        return self._json(200, {"list_id": list_id, "admin_notify_mchanges": False, "send_welcome_message": True,
                                "send_goodbye_message": True, "subscription_policy": "confirm",
                                **self.settings.get(list_id, {})})

    def _roster(self, request):
        list_id = urlsplit(request.url).path.split("/")[3]
        members = self.rosters[list_id]
        fields = parse_qs(urlsplit(request.url).query)["fields"]
        assert "delivery_status" not in fields, "Mailman answers 400 Unknown field for delivery_status"
        entries = [{f: v for f, v in self._resource(list_id, e, m).items() if f in fields}
                   for e, m in sorted(members.items())]
        return self._page(entries, request)

    @staticmethod
    def _resource(list_id: str, email: str, member: dict) -> dict:
        """A member resource as Mailman serves it: `moderation_action` absent when unset."""
        body = {"email": email, "member_id": member["member_id"], "list_id": list_id, "role": "member",
                "display_name": member["display_name"], "delivery_mode": member["delivery_mode"]}
        if member["moderation_action"]:
            body["moderation_action"] = member["moderation_action"]
        return body

    def _member(self, request):
        _, _, _, list_id, _, quoted = urlsplit(request.url).path.split("/")
        email = unquote(quoted).lower()
        member = self.rosters.get(list_id, {}).get(email)
        if member is None:
            return self._json(404, {"title": "404 Not Found"})
        return self._json(200, self._resource(list_id, email, member))

    def _find(self, request):
        query = parse_qs(urlsplit(request.url).query)
        assert "subscriber" not in query, "members/find?subscriber= is a wildcard search: never for one address"
        members = self.rosters[query["list_id"][0]]
        status = query["delivery_status"][0]
        entries = [{"member_id": m["member_id"], "email": e} for e, m in sorted(members.items())
                   if m["delivery_status"] == status]
        return self._page(entries, request)

    def _bans(self, request):
        parts = urlsplit(request.url).path.split("/")
        list_id = parts[3] if parts[2] == "lists" else None
        return self._page([{"email": e, "list_id": list_id} for e in self.bans.get(list_id, [])], request)

    def _requests(self, request):
        list_id = urlsplit(request.url).path.split("/")[3]
        return self._page([{"type": "subscription", "list_id": list_id, **r} for r in self.requests.get(list_id, [])],
                          request)

    def _decide(self, request):
        _, _, _, list_id, _, token = urlsplit(request.url).path.split("/")
        assert parse_qs(request.body)["action"] == ["discard"], "a request is only ever discarded, silently"
        self.writes["request_resolve"] += 1
        pending = self.requests.get(list_id, [])
        if not any(r["token"] == token for r in pending):
            return self._json(404, {"title": "404 Not Found"})
        self.requests[list_id] = [r for r in pending if r["token"] != token]
        return 204, {}, ""

    def _get_preferences(self, request):
        member_id = unquote(urlsplit(request.url).path.split("/")[-3])
        for members in self.rosters.values():
            for m in members.values():
                if m["member_id"] == member_id:
                    return self._json(200, {"delivery_status": m["delivery_status"],
                                            "delivery_mode": m["delivery_mode"]})
        return self._json(404, {"title": "404 Not Found"})

    def _unavailable(self):
        if self.unavailable_writes:
            self.unavailable_writes -= 1
            return True
        return False

    def _subscribe(self, request):
        self.writes["subscribe"] += 1
        if self._unavailable():
            return self._json(503, {"title": "503 Service Unavailable"})
        form = {k: v[0] for k, v in parse_qs(request.body).items()}
        assert form["pre_verified"] == form["pre_confirmed"] == form["pre_approved"] == "true"
        address = form["subscriber"]
        if address.lower() in {*self.bans.get(form["list_id"], []), *self.bans.get(None, [])}:
            return self._json(400, {"title": "400 Bad Request", "description": "Membership is banned"})
        if any(r["email"].lower() == address.lower() for r in self.requests.get(form["list_id"], [])):
            return self._json(409, {"title": "409 Conflict", "description": "Subscription request already pending"})
        if address in self.fail_subscribe:
            return self._json(400, {"title": "400 Bad Request", "description": 'Invalid Parameter "subscriber": .'})
        members = self.rosters[form["list_id"]]
        if address.lower() in members:
            return self._json(409, {"title": "409 Conflict", "description": "Member already subscribed"})
        members[address.lower()] = self.new_member(form["list_id"], address, form.get("display_name", ""),
                                                   **{k: form[k] for k in ("delivery_mode", "delivery_status")
                                                      if k in form})
        return 201, {"Location": f"{MAILMAN_REST}/3.1/members/x"}, ""

    def _mass_unsubscribe(self, request):
        self.writes["mass_unsubscribe"] += 1
        if self._unavailable():
            return self._json(503, {"title": "503 Service Unavailable"})
        list_id = urlsplit(request.url).path.split("/")[3]
        members = self.rosters[list_id]
        answer = {}
        for email in json.loads(request.body)["emails"]:
            answer[email] = members.pop(email, None) is not None  # case-sensitive, like Mailman
        return self._json(200, answer)

    def _rename(self, request):
        self.writes["rename"] += 1
        email = unquote(urlsplit(request.url).path.split("/")[-1])
        name = parse_qs(request.body)["display_name"][0]
        found = False
        for members in self.rosters.values():
            if email.lower() in members:
                members[email.lower()]["display_name"] = name
                found = True
        return (204, {}, "") if found else self._json(404, {"title": "404 Not Found"})

    def _preferences(self, request):
        self.writes["preferences"] += 1
        member_id = unquote(urlsplit(request.url).path.split("/")[-2])
        status = parse_qs(request.body)["delivery_status"][0]
        for members in self.rosters.values():
            for m in members.values():
                if m["member_id"] == member_id:
                    m["delivery_status"] = status
                    return 204, {}, ""
        return self._json(404, {"title": "404 Not Found"})

    def _patch_member(self, request):
        self.writes["moderate"] += 1
        member_id = unquote(urlsplit(request.url).path.split("/")[-1])
        form = {k: v[0] for k, v in parse_qs(request.body).items()}
        assert set(form) <= {"address", "delivery_mode", "moderation_action"}, "Mailman answers 400"
        for members in self.rosters.values():
            for m in members.values():
                if m["member_id"] == member_id:
                    m.update(form)
                    return 204, {}, ""
        return self._json(404, {"title": "404 Not Found"})


class WebhookReceiver(ThreadingHTTPServer):
    """A webhook endpoint on 127.0.0.1 that keeps every JSON body it is sent."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                receiver.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    def wait_for(self, words: str, seconds: float = 90) -> dict:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for body in self.bodies:
                if words in body["subject"] + body["body"]:
                    return body
            time.sleep(0.5)
        raise AssertionError(f"no notification with {words!r}; got {[b['subject'] for b in self.bodies]}")
