"""The one place that knows HTTP: session, timeouts, user agent, throttling and failure classes.

Both clients (Novi, Mailman) send every request through `ApiSession.request`, which turns
each failure into a typed error from `tasks.errors`: 429/5xx/timeouts/refused connections are
transient, other 4xx permanent, 401/403 a refused credential. Messages carry the method, the
status and a redacted path, never a query string, an address or a credential.
"""

from __future__ import annotations

import base64
import email.utils
import random
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import timezone
from urllib.parse import quote, quote_plus, urlsplit

import requests
import urllib3

from tasks.errors import CredentialsRefused, PermanentHTTPError, ReadStopped, TransientHTTPError, UnexpectedResponse
from tasks.release import RELEASE

USER_AGENT = f"novi-mailman/{RELEASE}"

# (connect, read) seconds. Novi pages of 1,000 full records and Mailman mass unsubscribes of
# 500 addresses take about a second; a minute of silence means the peer is stuck.
DEFAULT_TIMEOUT = (10.0, 60.0)
# The read timeout is per read: a peer that drips a byte a minute would hold a run (and its
# lock) for ever. One answer gets this long in all, headers and body.
DEFAULT_DEADLINE = 180.0
# The largest decoded answer read: a Novi page of 1,000 full records is ~3 MB. A 2 MB gzip
# answer inflated to 4.4 GB before this cap.
MAX_ANSWER_BYTES = 64 * 1024 * 1024
MAX_RETRY_AFTER = 300.0
MAX_REASON = 300  # characters of a peer's own words kept in a message

_ADDRESSY = re.compile(r"@|%40", re.IGNORECASE)


def redact_path(url: str) -> str:
    """The path of a URL with any segment that holds an address replaced, and no query."""
    path = urlsplit(url).path or "/"
    return "/".join("<address>" if _ADDRESSY.search(seg) else seg for seg in path.split("/"))


def redact_text(text: str, secrets: Collection[str] = ()) -> str:
    """Text from a peer (an error description) with the secrets and anything address-like
    masked, then cut: masking first, so a secret across the cut cannot leave a prefix behind."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return re.sub(r"\S+@\S+", "<address>", text)[:MAX_REASON]


def secret_forms(headers: dict[str, str], auth: tuple[str, str] | None) -> list[str]:
    """Every form a peer could echo a credential in: as sent, %-encoded, and Basic's base64."""
    plain = [h.split(" ", 1)[-1] for h in headers.values()]
    if auth is not None:
        plain += [auth[1], base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()]
    forms = {f for value in plain for f in (value, quote(value, safe=""), quote_plus(value),
                                            base64.b64encode(value.encode()).decode())}
    return sorted((f for f in forms if len(f) >= 4), key=len, reverse=True)  # longest first


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return min(max(0.0, when.timestamp() - now()), MAX_RETRY_AFTER)


def peer_reason(response: requests.Response, secrets: Collection[str] = ()) -> str:
    """Mailman's `{"title", "description"}` (or Novi's `Message`, or a short text body), redacted."""
    try:
        body = response.json()
    except (ValueError, RecursionError):
        body = None
    if isinstance(body, dict):
        text = str(body.get("description") or body.get("title") or body.get("Message") or "")
    else:
        text = "" if "html" in response.headers.get("Content-Type", "") else response.text[:10_000]
    return redact_text(text.strip(), secrets)


def _database_race(response: requests.Response) -> bool:
    """Mailman answers 400 when two requests write the same row at once (an IntegrityError or a
    locked SQLite database): the request was fine, so it is worth retrying."""
    text = response.text[:2000]
    return "IntegrityError" in text or "database is locked" in text


class Throttle:
    """Spaces requests at least `interval` seconds apart across threads (a client-side rate limit)."""

    def __init__(self, per_second: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval = 1.0 / per_second if per_second else 0.0
        self._clock, self._sleep = clock, sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self._sleep(start - now)


_JITTER = random.Random()


INTERACTIVE_CONNECT_S = 3.0


def backoff(attempt: int, rng: random.Random = _JITTER) -> float:
    """Seconds before retry number `attempt` (0-based): 1, 2, 4 … capped at 30, with ±50% jitter."""
    return min(2.0 ** attempt, 30.0) * rng.uniform(0.5, 1.5)


class ApiSession:
    """A `requests.Session` bound to one base URL, with the project's failure classes.

    Reads (GET) are retried here on transient failures, with backoff and jitter and the
    peer's Retry-After when it sends one, at most `read_retries` times: they are idempotent
    and a retried page keeps a sweep whole. Writes are never retried here: the batch task that
    sent them is the one retry layer for writes (tasks.mailman.apply_batch).
    """

    def __init__(self, base_url: str, *, headers: dict[str, str], auth: tuple[str, str] | None = None,
                 timeout: tuple[float, float] = DEFAULT_TIMEOUT, per_second: float | None = None,
                 read_retries: int = 0, system: str = "peer", deadline: float = DEFAULT_DEADLINE,
                 max_bytes: int = MAX_ANSWER_BYTES, sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url.rstrip("/")
        self.system = system
        self.timeout = timeout
        self.deadline = deadline
        self.max_bytes = max_bytes
        self.read_retries = read_retries
        self.calls: dict[str, int] = {}
        self._throttle = Throttle(per_second, sleep=sleep)
        self._sleep = sleep
        # Set while this session's reads run beside others (`halting`): once it is set, another
        # read failed, and this session's next request, or its wait before a retry, stops.
        self.halt: threading.Event | None = None
        # Who hears of a retry's wait as it starts (a run's log, tasks.run.heard): nobody by default.
        self.tell: Callable[[str], None] | None = None
        self._counter_lock = threading.Lock()
        self.session = requests.Session()
        self.session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json", **headers})
        if auth is not None:
            self.session.auth = auth
        # What a peer might echo back in an error body: never let it into a message.
        self._secrets = secret_forms(headers, auth)

    def interactive(self) -> None:
        """A person waits on this session (`check`): one short retry and a short connect timeout,
        not a nightly run's patience."""
        self.read_retries = min(self.read_retries, 1)
        self.timeout = (min(self.timeout[0], INTERACTIVE_CONNECT_S), self.timeout[1])

    def reason(self, response: requests.Response) -> str:
        """A peer's own words about an answer, fit for a message: secrets and addresses masked, then cut."""
        return peer_reason(response, self._secrets)

    def __repr__(self) -> str:  # never show headers: they hold the key
        return f"ApiSession({self.system} at {redact_path(self.base_url)})"

    def _count(self, bucket: str) -> None:
        with self._counter_lock:
            self.calls[bucket] = self.calls.get(bucket, 0) + 1

    def request(self, method: str, path: str, *, bucket: str, accept: Collection[int] = (),
                **kwargs) -> requests.Response:
        """Send one request; return a 2xx (or an `accept`ed status) or raise a typed error."""
        url = f"{self.base_url}/{path.lstrip('/')}"
        where = redact_path(url)
        retries = self.read_retries if method == "GET" else 0
        for attempt in range(retries + 1):
            self._go_on(method, where)
            try:
                return self._send(method, url, where, bucket, accept, kwargs)
            except TransientHTTPError as error:
                if attempt == retries:
                    raise
                delay = error.retry_after if error.retry_after is not None else backoff(attempt)
                if self.tell is not None:
                    self.tell(f"{str(error).rstrip('.')}; trying again in {delay:.0f} s (retry {attempt + 1} of "
                              f"{retries})")
                if self.halt is None:
                    self._sleep(delay)
                else:
                    self.halt.wait(delay)  # a halt ends the wait at once
        raise AssertionError("unreachable")  # the loop always returns or raises

    def _go_on(self, method: str, where: str) -> None:
        if self.halt is not None and self.halt.is_set():
            raise ReadStopped(f"{self.system}: {method} {where} not sent: another read of this run failed")

    def _send(self, method: str, url: str, where: str, bucket: str, accept: Collection[int],
              kwargs: dict) -> requests.Response:
        self._throttle.wait()
        self._count(bucket)
        started = time.monotonic()
        try:
            # No redirects: an API answers where it lives; following one would send the
            # credentials on (a redirect loop, a `file://` target, another host).
            response = self.session.request(method, url, timeout=self.timeout, stream=True, allow_redirects=False,
                                            **kwargs)
            self._read_body(response, method, where, started)
        except requests.Timeout:
            raise TransientHTTPError(
                f"{self.system}: {method} {where} timed out", method=method, path=where, status=None) from None
        except requests.exceptions.ChunkedEncodingError:
            raise TransientHTTPError(f"{self.system}: {method} {where}: the answer was cut short", method=method,
                                     path=where, status=None) from None
        except requests.ConnectionError:
            raise TransientHTTPError(
                f"{self.system}: {method} {where} could not connect", method=method, path=where,
                status=None) from None
        except requests.RequestException as exc:
            # requests' own message may quote a header, and so the key (an InvalidHeader for a
            # key ending in a newline): its type is all that is said.
            raise PermanentHTTPError(f"{self.system}: {method} {where} could not be sent ({type(exc).__name__})",
                                     method=method, path=where, status=None) from None
        status = response.status_code
        if status == 400 and _database_race(response):
            raise TransientHTTPError(
                f"{self.system}: {method} {where} answered 400: a database conflict on the server",
                method=method, path=where, status=status)
        if 300 <= status < 400 and status not in accept:
            target = urlsplit(response.headers.get("Location", ""))
            raise PermanentHTTPError(
                f"{self.system}: {method} {where} answered {status}, a redirect to "
                f"{target.scheme or '?'}://{target.hostname or '?'}: set the URL it points to", method=method,
                path=where, status=status)
        if status < 300 or status in accept:
            return response
        raise self._failure(method, where, response)

    def _read_body(self, response: requests.Response, method: str, where: str, started: float) -> None:
        """Read the answer whole, within the byte cap and the deadline.

        `read1` returns whatever has arrived (a 64 KiB `read` would wait for all 64 KiB, so a
        peer dripping a byte at a time would never reach the deadline check)."""
        chunks, size = [], 0
        try:
            while chunk := response.raw.read1(64 * 1024, decode_content=True):
                size += len(chunk)
                if size > self.max_bytes:
                    raise UnexpectedResponse(f"{self.system}: {method} {where}: the answer is larger than "
                                             f"{self.max_bytes // (1024 * 1024)} MB; refused")
                if time.monotonic() - started > self.deadline:
                    raise TransientHTTPError(f"{self.system}: {method} {where}: the answer took longer than "
                                             f"{self.deadline:.0f} s", method=method, path=where, status=None)
                chunks.append(chunk)
        except urllib3.exceptions.ReadTimeoutError:
            raise requests.Timeout() from None
        except (urllib3.exceptions.ProtocolError, urllib3.exceptions.IncompleteRead):
            raise requests.exceptions.ChunkedEncodingError() from None
        except urllib3.exceptions.DecodeError:
            raise UnexpectedResponse(f"{self.system}: {method} {where}: the answer's encoding is broken") from None
        finally:
            response.close()
        response._content = b"".join(chunks)  # what .json() and .text read from now on

    def _failure(self, method: str, where: str, response: requests.Response) -> Exception:
        status = response.status_code
        reason = self.reason(response)
        detail = f": {reason}" if reason else ""
        if status == 429 or status >= 500 or status == 408:
            return TransientHTTPError(
                f"{self.system}: {method} {where} answered {status}{detail}", method=method,
                path=where, status=status, retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        if status in (401, 403):
            return CredentialsRefused(
                f"{self.system}: {method} {where} answered {status}: the API key or password was refused",
                method=method, path=where, status=status,
            )
        return PermanentHTTPError(
            f"{self.system}: {method} {where} answered {status}{detail}", method=method, path=where,
            status=status,
        )


@contextmanager
def halting(*sessions: ApiSession) -> Iterator[threading.Event]:
    """One halt for reads that run at once on these sessions: whoever sees a read fail sets it,
    and every other read stops at its next request (ReadStopped) instead of running on."""
    halt = threading.Event()
    for session in sessions:
        session.halt = halt
    try:
        yield halt
    finally:
        for session in sessions:
            session.halt = None


def json_body(response: requests.Response, what: str) -> object:
    """The JSON body of a 2xx, or `UnexpectedResponse` (an HTML page with status 200, say)."""
    try:
        return response.json()
    except ValueError:
        kind = response.headers.get("Content-Type", "unknown type")
        raise UnexpectedResponse(f"{what}: the answer is not JSON ({kind[:60]})") from None
    except RecursionError:
        raise UnexpectedResponse(f"{what}: the answer is JSON nested too deep to be an API's") from None

