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

import asyncio
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from tasks.core.schema import GUID, MAX_MEMBERS_PER_RUN

EVENTS = {"customer.created", "customer.updated", "customer.removed"}
MAX_BODY = 2048  # Novi's body is ~90 bytes
TOKEN_HEADER = "X-Novi-Mailman-Token"
EXCHANGE_TIMEOUT = 10.0  # seconds a connection gets to deliver a whole request (headers and body)
MAX_CONNECTIONS = 200    # open connections at once; more are closed as they arrive

log = logging.getLogger("novi_mailman.relay")


MAX_WINDOW_S = 24 * 3600  # a member quiet for a day is due: a longer (or infinite) window never hands off

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


class RelayError(ValueError):
    """The relay cannot start as asked: a bad option, a missing deployment, a port in use."""


class Relay:
    """The relay's state: its secret, its queue, its hand-off and what it has counted."""

    def __init__(self, token: str, handoff: Callable[[list[str]], None], queue: MemberQueue | None = None,
                 reachable: Callable[[], bool] = lambda: True,
                 full_sync: Callable[[list[str]], None] | None = None, full_sync_above: int = 1000) -> None:
        if len(token) < 16:
            raise RelayError("the relay token must be at least 16 characters")
        queue = queue if queue is not None else MemberQueue()  # an empty queue is falsy
        if not 1 <= queue.max_batch <= MAX_MEMBERS_PER_RUN:
            raise RelayError(f"--max-batch must be 1 to {MAX_MEMBERS_PER_RUN} members per run")
        if not 0 <= queue.window <= MAX_WINDOW_S:  # nan compares false: refused too
            raise RelayError(f"--window must be 0 to {MAX_WINDOW_S:,} seconds")
        if full_sync_above < 1:
            raise RelayError("--full-sync-above must be at least 1 member")
        self._token = token.encode()
        self.handoff = handoff
        self.queue = queue
        self.reachable = reachable
        self.full_sync = full_sync
        self.full_sync_above = full_sync_above
        self.counts = {"accepted": 0, "ignored": 0, "refused": 0, "handed_off": 0, "handoff_failures": 0,
                       "full_syncs": 0, "connections_closed": 0}

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


class _Once:
    """Let a thing through at most once a minute per kind, counting the rest (a flood is one line)."""

    def __init__(self, every: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every, self._clock = every, clock
        self._last: dict[str, float] = {}
        self._since: dict[str, int] = {}

    def due(self, kind: str) -> int:
        """How many times `kind` happened since it was last let through, if it is due now; else 0."""
        now = self._clock()
        self._since[kind] = self._since.get(kind, 0) + 1
        if now - self._last.get(kind, -self.every) < self.every:
            return 0
        self._last[kind] = now
        return self._since.pop(kind)

    def __call__(self, kind: str, message: str, level: int = logging.WARNING) -> None:
        if times := self.due(kind):
            log.log(level, "%s%s", message, f" ({times} times in the last minute)" if times > 1 else "")

    def filter(self, record: logging.LogRecord) -> bool:
        """As a logging filter: a repeated record (asyncio's accept() errors, say) once a minute."""
        return bool(self.due(record.getMessage()[:80]))


say_once = _Once()


async def _read_capped(request: Request) -> bytes | None:
    """The body, or None past MAX_BODY: a chunked upload is not buffered beyond the limit."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return None
    return bytes(body)


def create_app(relay: Relay) -> FastAPI:
    # No slash redirects: a 307 to a Host of the caller's choosing, without a token, is an open redirect.
    app = FastAPI(title="novi-mailman relay", docs_url=None, redoc_url=None, openapi_url=None,
                  redirect_slashes=False)

    def refuse(status: int, why: str) -> JSONResponse:
        relay.counts["refused"] += 1
        # A body left unread (too large, cut short) would otherwise still be read and dropped,
        # a gigabyte of it if the sender likes: close the connection with the answer.
        headers = {"Connection": "close"} if status in (413, 400) else None
        return JSONResponse({"error": why}, status_code=status, headers=headers)

    async def receive(request: Request, token: str | None) -> JSONResponse:
        if not relay.authorised(token or request.headers.get(TOKEN_HEADER)):
            return refuse(401, "unknown caller")
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
            return refuse(413, "body too large")
        try:
            body = await _read_capped(request)
        except ClientDisconnect:
            say_once("disconnect", "a caller disconnected before its body was read")
            return refuse(400, "body incomplete")
        if body is None:
            return refuse(413, "body too large")
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
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
            say_once("prefect-down", "Prefect is unreachable: webhooks refused with 503 so that the sender retries",
                     logging.ERROR)
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
    """Whether the Prefect API answers, as last found; asked at most every `ttl` seconds.

    Never asked on the caller's time: a stale answer starts one refresh in the background and
    the cached answer is returned at once. A Prefect that accepts and never answers would
    otherwise stall every request of the event loop (p99 2.15 s, 401s included)."""

    def __init__(self, api_url: str, ttl: float = 5.0, timeout: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.health_url = f"{api_url.rstrip('/')}/health"
        self.ttl, self.timeout = ttl, timeout
        self._clock = clock
        self._checked_at: float | None = None
        self._answer = False
        self._refreshing = threading.Lock()

    def refresh(self) -> bool:
        """Ask now (blocking, at most `timeout` seconds) and keep the answer."""
        try:
            answer = httpx.get(self.health_url, timeout=self.timeout).status_code == 200
        except httpx.HTTPError:
            answer = False
        self._answer, self._checked_at = answer, self._clock()
        return answer

    def __call__(self) -> bool:
        stale = self._checked_at is None or self._clock() - self._checked_at >= self.ttl
        if stale and self._refreshing.acquire(blocking=False):
            def run() -> None:
                try:
                    self.refresh()
                finally:
                    self._refreshing.release()
            threading.Thread(target=run, daemon=True, name="relay-probe").start()
        return self._answer


class _GuardedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with the limits it lacks: a connection must deliver a whole
    request within EXCHANGE_TIMEOUT (idle and slow-header sockets are closed), and no more
    than MAX_CONNECTIONS are open at once (300 idle sockets made every real webhook time out)."""

    relay: Relay | None = None
    _timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Served on a socket we bound (sockets=...), answers otherwise wait ~40 ms each on
            # Nagle and delayed ACKs (measured: 44 ms a webhook, against 1.7 ms).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if len(self.connections) > MAX_CONNECTIONS:
            self._close("too many connections at once: new ones are closed until they drop")
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._timer is None:
            self._arm()
        super().data_received(data)

    def on_response_complete(self) -> None:
        self._disarm()
        super().on_response_complete()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._timer = self.loop.call_later(EXCHANGE_TIMEOUT, self._close,
                                           f"connections idle or slow for {EXCHANGE_TIMEOUT:.0f} s were closed")

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close(self, why: str) -> None:
        self._timer = None
        if self.relay is not None:
            self.relay.counts["connections_closed"] += 1
        say_once(why, why)
        if not self.transport.is_closing():
            self.transport.close()


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or `RelayError` (uvicorn would exit with 3, the "guard refused" code)."""
    if not 0 <= port <= 65535:
        raise RelayError("--port must be 1 to 65535 (0: any free port)")
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise RelayError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def make_server(relay: Relay):
    """The relay's uvicorn server, with the guarded protocol and keep-alive and size limits."""
    import uvicorn

    class Protocol(_GuardedH11):
        pass
    Protocol.relay = relay

    config = uvicorn.Config(create_app(relay), http=Protocol, log_level="warning", timeout_keep_alive=5,
                            limit_concurrency=MAX_CONNECTIONS, h11_max_incomplete_event_size=16 * 1024)
    return uvicorn.Server(config)


def serve(relay: Relay, sock: socket.socket) -> None:
    """Serve the relay on a bound socket until interrupted; its hand-off loop beside it.

    A hand-off loop that fails for another reason than an outage (a bug) stops the relay rather
    than queue webhooks nobody hands off: `RuntimeError` then."""
    server = make_server(relay)
    broken = threading.Event()

    def flush_or_stop() -> None:
        try:
            flush_forever(relay)
        except BaseException:
            log.exception("the relay's hand-off loop failed")
            broken.set()
            server.should_exit = True

    threading.Thread(target=flush_or_stop, daemon=True, name="relay-flush").start()
    logging.getLogger("asyncio").addFilter(_Once())  # e.g. accept() out of file descriptors
    server.run(sockets=[sock])
    if broken.is_set():
        raise RuntimeError("the relay's hand-off loop failed (see the log above); stopped")


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


def start(*, token: str, host: str, port: int, deployment: str, full_sync_deployment: str, full_sync_above: int,
          window: float, max_batch: int, say: Callable[[str], None]) -> None:
    """The relay as the command line starts it: checked, bound, then served until interrupted.

    Hand-offs start the deployments on the Prefect server at `PREFECT_API_URL` (workers share
    it). Anything that stops it from starting (no Prefect, a missing deployment, a bad option,
    a port in use) is a `RelayError` before it listens; `say` reports what it does."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    if not api_url:
        raise RelayError("set PREFECT_API_URL: the relay hands runs to a Prefect server that workers share")
    probe = PrefectProbe(api_url)

    def member_sync(member_ids: list[str]) -> None:
        run_deployment(deployment, parameters={"member_ids": member_ids}, timeout=0, tags=["novi-webhook"])
        say(f"Started {deployment} for {len(member_ids)} member(s)")

    def full_sync(member_ids: list[str]) -> None:
        run_deployment(full_sync_deployment, timeout=0, tags=["novi-webhook"])
        say(f"{len(member_ids)} members changed at once: started {full_sync_deployment}")

    relay = Relay(token, member_sync, MemberQueue(window=window, max_batch=max_batch), probe,
                  full_sync=full_sync, full_sync_above=full_sync_above)
    if not probe.refresh():
        raise RelayError(f"the Prefect API at {api_url} does not answer")
    _deployments_exist([deployment, full_sync_deployment])
    sock = bind(host, port)
    say(f"Relay listening on http://{host}:{port}/novi/<token> (health: /health)")
    serve(relay, sock)


def _deployments_exist(names: list[str]) -> None:
    """Both hand-off targets, before listening: a missing one would answer 202 for ever."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for name in names:
            try:
                client.read_deployment_by_name(name)
            except ObjectNotFound:
                raise RelayError(f"there is no deployment {name} on the Prefect server: `prefect deploy --all` "
                                 "first, or name the right one (--deployment / --full-sync-deployment)") from None
