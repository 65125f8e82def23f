"""A Novi AMS sandbox: the member API as reference/novi-api.md describes it, with seeded data,
churn, webhooks and fault injection. Run it from the checkout with `python -m sandbox.novi`
(see `--help`); it is not part of the installed package.

Endpoints (all need `Authorization: Basic <key>`, the key as is; anything else is 401):
  GET /api/members?pageSize=&offset=   {TotalCount, Results}   (capped at --page-cap)
      filters: email= (exact, any case), parentName= (the people of the company of that name)
  GET /api/members/{id}, /api/customers/{id}   a bare record; unknown ids answer 200, empty body
  GET /api/member-types, /api/groups
Control (same key), for demos and tests:
  POST /_sandbox/churn {"lapse": n, "renew": n, "rename": n, "change_address": n, "opt_out": n,
                        "end_term": n, "change_chapter": n, "lapse_company": n,
                        "add": n, "remove": n}                       → what changed, by id
  PATCH /_sandbox/members/{id} {field: value, ...}                   → change one record
  POST /_sandbox/faults {...} / DELETE /_sandbox/faults               → switch faults on / off
  POST /_sandbox/webhook {"event", "id"}                              → send one webhook now
  POST /_sandbox/reset {"size", "seed"}, GET /_sandbox/state
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from sandbox import data

DEFAULT_PORT = 8765
DEFAULT_KEY = "sandbox-api-key"


class Faults(BaseModel):
    """Faults switchable per test; every field off by default."""

    model_config = ConfigDict(extra="forbid")

    fail_offsets: list[int] = []        # these pages answer 500
    html_offsets: list[int] = []        # these pages answer 200 with an HTML error page
    short_offsets: list[int] = []       # these pages are cut to half their records
    total_changes_after_pages: int | None = None   # TotalCount grows by one after this many pages
    latency_ms: int = 0                 # added to every request
    rate_limit_per_second: int | None = None       # above it: 429
    send_retry_after: bool = True       # whether a 429 carries Retry-After


class Churn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lapse: int = 0
    renew: int = 0
    rename: int = 0
    change_address: int = 0
    opt_out: int = 0
    add: int = 0
    remove: int = 0
    end_term: int = 0        # a committee seat's term ends today
    change_chapter: int = 0  # a member moves to another chapter (the Chapter custom field)
    lapse_company: int = 0   # a member company's membership lapses (its contacts and inheriting people with it)
    seed: int | None = None


class Reset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int | None = None
    seed: int | None = None
    domains: list[str] | None = None   # mail domains of the generated addresses
    page_cap: int | None = None        # largest page the server returns
    webhook_url: str | None = None     # where webhooks go from now on


class Webhook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event: str = "customer.updated"
    id: str


def _json(record: dict | None) -> str:
    """As FastAPI's JSONResponse encodes it."""
    return json.dumps(record, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


@dataclass
class Site:
    """The members of one sandbox site: generated records plus the changes made to them."""

    size: int
    seed: int
    domains: tuple[str, ...] = tuple(data.DOMAINS)
    order: list[str] = field(default_factory=list)        # UniqueIDs /api/members returns, in order
    overrides: dict[str, dict] = field(default_factory=dict)
    removed: dict[str, dict] = field(default_factory=dict)  # still readable one by one, like Novi
    next_index: int = 0
    churns: int = 0
    # Each generated record's JSON, made once: a real Novi costs this machine nothing, and
    # making and encoding 1,000 records per page took 0.28 s of CPU the tool and Mailman need.
    _encoded: dict[int, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.order = [data.member_id(i) for i in range(self.size)]
        self.next_index = self.size

    def record(self, unique_id: str) -> dict | None:
        if unique_id in self.overrides:
            return self.overrides[unique_id]
        if unique_id in self.removed:
            return self.removed[unique_id]
        index = data.index_of(unique_id)
        if index is None or index >= self.next_index:
            return None
        return data.make_member(self.seed, index, domains=self.domains)

    def page(self, offset: int, size: int) -> list[str]:
        """The page's records, each as the JSON Novi sends."""
        return [self.encoded(uid) for uid in self.order[offset:offset + size]]

    def encoded(self, unique_id: str) -> str:
        if unique_id in self.overrides or unique_id in self.removed:
            return _json(self.record(unique_id))
        index = data.index_of(unique_id)
        if index not in self._encoded:
            self._encoded[index] = _json(self.record(unique_id))
        return self._encoded[index]

    def edit(self, unique_id: str, changes: dict) -> dict:
        record = dict(self.record(unique_id) or {})
        if not record:
            raise KeyError(unique_id)
        record.update(changes)
        self.overrides[unique_id] = record
        return record

    def _candidates(self, rng: random.Random, n: int, test) -> list[str]:
        """Up to n ordinary person records (no quirk) that pass `test`, chosen by `rng`."""
        picked: list[str] = []
        start = rng.randrange(max(1, len(self.order)))
        for step in range(len(self.order)):
            uid = self.order[(start + step) % len(self.order)]
            record = self.record(uid)
            if (record and record["CustomerType"] == "Person" and record["Active"]
                    and record["Email"] == record["AccountEmail"] and data.index_of(uid) is not None
                    and "@" in (record["Email"] or "") and test(record)):
                picked.append(uid)
                if len(picked) == n:
                    break
        return picked

    def churn(self, request: Churn) -> dict[str, list[dict]]:
        """Apply a mix of realistic changes; returns what changed, per kind."""
        self.churns += 1
        rng = random.Random(request.seed if request.seed is not None else self.seed * 31 + self.churns)
        done: dict[str, list[dict]] = {k: [] for k in ("lapse", "renew", "rename", "change_address", "opt_out",
                                                       "add", "remove", "end_term", "change_chapter",
                                                       "lapse_company")}
        touched: set[str] = set()

        def pick(n: int, test) -> list[str]:
            ids = self._candidates(rng, n + len(touched), lambda r: r["UniqueID"] not in touched and test(r))[:n]
            touched.update(ids)
            return ids

        current = lambda r: r["MemberStatus"] in ("current", "grace_period") and not r["UnsubscribeFromEmails"]  # noqa: E731
        for uid in pick(request.lapse, current):
            self.edit(uid, {"MemberStatus": "expired", "MembershipExpires": "2026-10-31T00:00:00"})
            done["lapse"].append({"id": uid})
        for uid in pick(request.renew, lambda r: r["MemberStatus"] == "expired" and not r["UnsubscribeFromEmails"]):
            self.edit(uid, {"MemberStatus": "current", "MembershipExpires": "2027-11-30T00:00:00"})
            done["renew"].append({"id": uid})
        for uid in pick(request.rename, current):
            new_last = rng.choice(data.LAST) + "-" + rng.choice(data.LAST)
            record = self.edit(uid, {"LastName": new_last})
            done["rename"].append({"id": uid, "name": f"{record['FirstName']} {new_last}"})
        for uid in pick(request.change_address, current):
            old = self.record(uid)["Email"]
            new = f"{old.partition('@')[0]}.moved{self.churns}@{self.domains[-1]}"
            self.edit(uid, {"Email": new, "AccountEmail": new})
            done["change_address"].append({"id": uid, "old": old, "new": new})
        for uid in pick(request.opt_out, current):
            self.edit(uid, {"UnsubscribeFromEmails": True})
            done["opt_out"].append({"id": uid})
        today = datetime.now(timezone.utc).replace(microsecond=0)
        seated = lambda r: any(s["EndDate"] is None or s["EndDate"] > today.isoformat()  # noqa: E731
                               for s in r.get("Committees") or [])
        for uid in pick(request.end_term, seated):
            seats = [dict(s) for s in self.record(uid)["Committees"]]
            ended = next(s for s in seats if s["EndDate"] is None or s["EndDate"] > today.isoformat())
            ended["EndDate"] = (today - timedelta(seconds=1)).isoformat()
            self.edit(uid, {"Committees": seats})
            done["end_term"].append({"id": uid, "committee": ended["CommitteeName"]})
        for uid in pick(request.change_chapter, current):
            fields = dict(self.record(uid).get("CustomFields") or {})
            old_chapter = (fields.get("Chapter") or {}).get("Value")
            new_chapter = rng.choice([c for c in data.CHAPTERS if c != old_chapter])
            fields["Chapter"] = {"Name": "Chapter", "Value": new_chapter}
            self.edit(uid, {"CustomFields": fields})
            done["change_chapter"].append({"id": uid, "old": old_chapter, "new": new_chapter})
        companies = [uid for uid in self.order if request.lapse_company and uid not in touched
                     and (r := self.record(uid))["CustomerType"] == "Company" and r["Active"]
                     and r["MemberStatus"] in ("current", "grace_period") and r["PrimaryContactUniqueId"]]
        for uid in rng.sample(companies, min(request.lapse_company, len(companies))):
            touched.add(uid)
            self.edit(uid, {"MemberStatus": "expired", "MembershipExpires": "2026-10-31T00:00:00"})
            done["lapse_company"].append({"id": uid, "name": self.record(uid)["Name"]})
        for _ in range(request.add):
            index = self.next_index
            self.next_index += 1
            record = data.make_member(self.seed, index, data.CLEAN, self.domains)
            record.update({"MemberStatus": "current", "MembershipExpires": "2027-11-30T00:00:00",
                           "MemberType": data.MEMBER_TYPES[0]})
            self.overrides[record["UniqueID"]] = record
            self.order.append(record["UniqueID"])
            done["add"].append({"id": record["UniqueID"], "email": record["Email"]})
        for uid in pick(request.remove, lambda r: True):
            record = dict(self.record(uid))
            record["Active"] = False
            self.removed[uid] = record
            self.overrides.pop(uid, None)
            self.order.remove(uid)
            done["remove"].append({"id": uid})
        return done


class Sandbox:
    """The running sandbox: a site, its faults, its rate limiter and its webhook target."""

    def __init__(self, size: int, seed: int, key: str, page_cap: int, webhook_url: str | None) -> None:
        self.key = key
        self.page_cap = page_cap
        self.webhook_url = webhook_url
        self.site = Site(size, seed)
        self.faults = Faults()
        self.pages_served = 0
        self.requests = 0
        self.webhooks_sent = 0
        self._window: list[float] = []
        self._lock = threading.Lock()

    def authorised(self, request: Request) -> bool:
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Basic {self.key}".encode())

    def throttled(self) -> bool:
        limit = self.faults.rate_limit_per_second
        if not limit:
            return False
        now = time.monotonic()
        with self._lock:
            self._window = [t for t in self._window if now - t < 1.0]
            if len(self._window) >= limit:
                return True
            self._window.append(now)
        return False

    async def send_webhook(self, event: str, unique_id: str) -> int:
        if not self.webhook_url:
            raise ValueError("no webhook URL configured (start with --webhook-url)")
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(self.webhook_url, json={"event": event, "entityUniqueId": unique_id})
        self.webhooks_sent += 1
        return response.status_code


def create_app(sandbox: Sandbox) -> FastAPI:
    app = FastAPI(title="Novi AMS sandbox", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sandbox = sandbox

    @app.middleware("http")
    async def gate(request: Request, call_next):
        sandbox.requests += 1
        if sandbox.faults.latency_ms:
            await asyncio.sleep(sandbox.faults.latency_ms / 1000)
        if not sandbox.authorised(request):
            return JSONResponse({"Message": "Authorization has been denied for this request."}, status_code=401)
        if request.url.path.startswith("/api/") and sandbox.throttled():
            headers = {"Retry-After": "1"} if sandbox.faults.send_retry_after else {}
            return JSONResponse({"Message": "Too many requests"}, status_code=429, headers=headers)
        return await call_next(request)

    @app.get("/api/members")
    def members(pageSize: int = 100, offset: int = 0, email: str | None = None,  # noqa: N803 - Novi's names
                parentName: str | None = None):  # noqa: N803
        faults, site = sandbox.faults, sandbox.site
        if email is not None or parentName is not None:
            # Novi's filters: exact, case-insensitive; parentName= the parent company's name (a guess)
            everyone = [site.record(uid) for uid in site.order]
            if email is not None:
                found = [r for r in everyone if (r.get("Email") or "").lower() == email.lower()]
            else:
                names = {r["UniqueID"]: (r.get("Name") or "").lower() for r in everyone}
                found = [r for r in everyone if names.get(r.get("ParentCustomerUniqueID")) == parentName.lower()]
            return {"TotalCount": len(found), "Results": found[offset:offset + min(pageSize, sandbox.page_cap)]}
        if offset in faults.fail_offsets:
            return JSONResponse({"Message": "An error has occurred."}, status_code=500)
        if offset in faults.html_offsets:
            return HTMLResponse("<html><body><h1>Service temporarily unavailable</h1></body></html>")
        size = max(0, min(pageSize, sandbox.page_cap))
        results = site.page(offset, size)
        if offset in faults.short_offsets:
            results = results[: len(results) // 2]
        sandbox.pages_served += 1
        total = len(site.order)
        after = faults.total_changes_after_pages
        if after is not None and sandbox.pages_served > after:
            total += 1
        return Response(f'{{"TotalCount":{total},"Results":[{",".join(results)}]}}', media_type="application/json")

    def one(unique_id: str):
        record = sandbox.site.record(unique_id.lower())
        if record is None:  # Novi answers 200 with nothing for an unknown id
            return Response(status_code=200, content=b"", media_type="application/json")
        return record

    app.get("/api/members/{unique_id}")(one)
    app.get("/api/customers/{unique_id}")(one)
    app.get("/api/member-types")(lambda: data.member_types_body())
    app.get("/api/groups")(lambda: data.groups_body())

    @app.post("/_sandbox/churn")
    async def churn(request: Churn):
        done = sandbox.site.churn(request)
        if sandbox.webhook_url:  # Novi fires no event for a lapse (status is derived from dates)
            events = [("customer.updated", c["id"]) for kind in ("renew", "rename", "change_address", "opt_out",
                                                                   "end_term", "change_chapter")
                      for c in done[kind]]
            events += [("customer.created", c["id"]) for c in done["add"]]
            events += [("customer.removed", c["id"]) for c in done["remove"]]
            for event, uid in events:
                await sandbox.send_webhook(event, uid)
        return done

    @app.patch("/_sandbox/members/{unique_id}")
    async def edit(unique_id: str, request: Request):
        changes = await request.json()
        try:
            return sandbox.site.edit(unique_id.lower(), changes)
        except KeyError:
            return JSONResponse({"Message": "no such member"}, status_code=404)

    @app.post("/_sandbox/faults")
    def set_faults(faults: Faults):
        sandbox.faults = faults
        sandbox.pages_served = 0
        return faults

    @app.delete("/_sandbox/faults")
    def clear_faults():
        sandbox.faults = Faults()
        return sandbox.faults

    @app.post("/_sandbox/webhook")
    async def webhook(request: Webhook):
        status = await sandbox.send_webhook(request.event, request.id)
        return {"sent": True, "status": status}

    @app.post("/_sandbox/reset")
    def reset(request: Reset):
        sandbox.site = Site(request.size if request.size is not None else sandbox.site.size,
                            request.seed if request.seed is not None else sandbox.site.seed,
                            tuple(request.domains or sandbox.site.domains))
        sandbox.faults = Faults()
        sandbox.pages_served = 0
        if request.page_cap:
            sandbox.page_cap = request.page_cap
        if request.webhook_url:
            sandbox.webhook_url = request.webhook_url
        return {"size": sandbox.site.size, "seed": sandbox.site.seed, "page_cap": sandbox.page_cap}

    @app.get("/_sandbox/state")
    def state():
        return {"members": len(sandbox.site.order), "seed": sandbox.site.seed, "page_cap": sandbox.page_cap,
                "requests": sandbox.requests, "pages_served": sandbox.pages_served,
                "webhooks_sent": sandbox.webhooks_sent, "faults": json.loads(sandbox.faults.model_dump_json())}

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.novi", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--size", type=int, default=300, help="members (10 to 1,000,000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--key", default=DEFAULT_KEY, help="the API key clients must send")
    parser.add_argument("--page-cap", type=int, default=1000, help="largest page the server returns")
    parser.add_argument("--webhook-url", default=None, help="where churn sends Novi-style webhooks")
    args = parser.parse_args(argv)
    sandbox = Sandbox(args.size, args.seed, args.key, args.page_cap, args.webhook_url)
    uvicorn.run(create_app(sandbox), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
