"""The webhook relay: Novi's webhooks in, debounced hand-offs to Prefect out.

Novi signs nothing and sends only `{"event", "entityUniqueId"}` (reference/novi-api.md), so
the relay trusts nothing but a GUID: the caller proves itself with a secret token (in the URL
path or the `X-Novi-Mailman-Token` header, compared in constant time), bodies are small and
strict, and the member is re-read from Novi by the run it triggers. A bulk import may send
thousands of webhooks a minute: ids are queued, each waits until its member has been quiet
for `window` seconds, and due ids leave in batches of at most `max_batch` per hand-off, so a
burst becomes a bounded number of runs. An id leaves the queue only once a hand-off took it.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
EVENTS = {"customer.created", "customer.updated", "customer.removed"}
MAX_BODY = 2048  # Novi's body is ~90 bytes
TOKEN_HEADER = "X-Novi-Mailman-Token"

log = logging.getLogger("novi_mailman.relay")


class MemberQueue:
    """Member ids waiting for a run: debounced per member, handed off in bounded batches."""

    def __init__(self, window: float = 30.0, max_batch: int = 200,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.max_batch = max_batch
        self._clock = clock
        self._last_event: dict[str, float] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._last_event)

    def add(self, member_id: str) -> None:
        """Note an event for a member; a new event restarts that member's quiet window."""
        with self._lock:
            self._last_event[member_id.lower()] = self._clock()

    def take_due(self, limit: int | None = None) -> list[str]:
        """Up to `limit` (default `max_batch`) members quiet for a whole window, oldest first;
        they leave the queue."""
        now = self._clock()
        with self._lock:
            due = sorted((t, m) for m, t in self._last_event.items() if now - t >= self.window)
            batch = [m for _, m in due[: limit or self.max_batch]]
            for member_id in batch:
                del self._last_event[member_id]
        return batch

    def count_due(self) -> int:
        now = self._clock()
        with self._lock:
            return sum(1 for t in self._last_event.values() if now - t >= self.window)

    def put_back(self, member_ids: Sequence[str]) -> None:
        """A hand-off failed: the members wait again (already due, so the next attempt takes them)."""
        with self._lock:
            for member_id in member_ids:
                self._last_event.setdefault(member_id, self._clock() - self.window)


class Relay:
    """The relay's state: its secret, its queue, its hand-off and what it has counted."""

    def __init__(self, token: str, handoff: Callable[[list[str]], None], queue: MemberQueue | None = None,
                 reachable: Callable[[], bool] = lambda: True,
                 full_sync: Callable[[list[str]], None] | None = None, full_sync_above: int = 1000) -> None:
        if len(token) < 16:
            raise ValueError("the relay token must be at least 16 characters")
        self._token = token.encode()
        self.handoff = handoff
        self.queue = queue if queue is not None else MemberQueue()  # an empty queue is falsy
        self.reachable = reachable
        self.full_sync = full_sync
        self.full_sync_above = full_sync_above
        self.counts = {"accepted": 0, "ignored": 0, "refused": 0, "handed_off": 0, "handoff_failures": 0,
                       "full_syncs": 0}

    def authorised(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self._token)

    def flush(self) -> int:
        """Hand off every due batch now; the number of members handed off.

        When more members are due than `full_sync_above` (a bulk import), one full sync takes
        them all: it re-reads everyone anyway, at a fraction of the calls."""
        if self.full_sync is not None and self.queue.count_due() > self.full_sync_above:
            batch = self.queue.take_due(limit=len(self.queue))
            self._hand_off(self.full_sync, batch)
            self.counts["full_syncs"] += 1
            return len(batch)
        handed = 0
        while batch := self.queue.take_due():
            self._hand_off(self.handoff, batch)
            handed += len(batch)
        return handed

    def _hand_off(self, start: Callable[[list[str]], None], batch: list[str]) -> None:
        try:
            start(batch)
        except Exception as exc:  # any failure: the members go back, the sender is told next time
            self.queue.put_back(batch)
            self.counts["handoff_failures"] += 1
            log.error("hand-off of %d members failed (%s); they stay queued", len(batch), type(exc).__name__)
            raise
        self.counts["handed_off"] += len(batch)


def create_app(relay: Relay) -> FastAPI:
    app = FastAPI(title="novi-mailman relay", docs_url=None, redoc_url=None, openapi_url=None)

    def refuse(status: int, why: str) -> JSONResponse:
        relay.counts["refused"] += 1
        return JSONResponse({"error": why}, status_code=status)

    async def receive(request: Request, token: str | None) -> JSONResponse:
        if not relay.authorised(token or request.headers.get(TOKEN_HEADER)):
            return refuse(401, "unknown caller")
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
            return refuse(413, "body too large")
        body = await request.body()
        if len(body) > MAX_BODY:
            return refuse(413, "body too large")
        try:
            payload = json.loads(body)
        except ValueError:
            return refuse(400, "body is not JSON")
        if not isinstance(payload, dict) or not isinstance(payload.get("event"), str):
            return refuse(400, "no event")
        member_id = payload.get("entityUniqueId")
        if not isinstance(member_id, str) or not GUID.fullmatch(member_id):
            return refuse(400, "entityUniqueId is not a GUID")
        if payload["event"] not in EVENTS:
            relay.counts["ignored"] += 1
            return JSONResponse({"ignored": payload["event"][:64]}, status_code=202)
        if not relay.reachable():
            # Tell Novi to try again later rather than take an event we could not act on.
            log.error("Prefect is unreachable: webhook refused with 503 so that the sender retries")
            return refuse(503, "temporarily unable to accept events")
        relay.queue.add(member_id)
        relay.counts["accepted"] += 1
        return JSONResponse({"queued": True}, status_code=202)

    @app.post("/novi/{token}")
    async def with_path_token(token: str, request: Request):
        return await receive(request, token)

    @app.post("/novi")
    async def with_header_token(request: Request):
        return await receive(request, None)

    @app.get("/health")
    def health():
        return {"ok": relay.reachable(), "queued": len(relay.queue), **relay.counts}

    return app


class PrefectProbe:
    """Whether the Prefect API answers, asked at most every `ttl` seconds (webhooks come in bursts)."""

    def __init__(self, api_url: str, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.health_url = f"{api_url.rstrip('/')}/health"
        self.ttl = ttl
        self._clock = clock
        self._checked_at: float | None = None
        self._answer = False

    def __call__(self) -> bool:
        now = self._clock()
        if self._checked_at is None or now - self._checked_at >= self.ttl:
            try:
                self._answer = httpx.get(self.health_url, timeout=2).status_code == 200
            except httpx.HTTPError:
                self._answer = False
            self._checked_at = now
        return self._answer


def flush_forever(relay: Relay, every: float = 1.0, stop: threading.Event | None = None) -> None:
    """The relay's background loop: hand off due members every `every` seconds."""
    stop = stop or threading.Event()
    while not stop.wait(every):
        failures = relay.counts["handoff_failures"]
        try:
            relay.flush()
        except Exception:
            # A hand-off that failed was logged and its members requeued by `_hand_off`: the loop
            # outlives Prefect's outages and tries again. Anything else is a bug: let it out.
            if relay.counts["handoff_failures"] == failures:
                raise
