import pytest
import requests
import responses

from tasks.errors import (CredentialsRefused, PermanentHTTPError, ReadStopped, TransientHTTPError, UnexpectedResponse,
                          is_transient)
from tasks.http import ApiSession, Throttle, backoff, halting, json_body, parse_retry_after, redact_path

BASE = "http://peer.test/api"

CLASSES = [
    (429, TransientHTTPError), (500, TransientHTTPError), (502, TransientHTTPError),
    (503, TransientHTTPError), (504, TransientHTTPError), (408, TransientHTTPError),
    (400, PermanentHTTPError), (401, CredentialsRefused), (403, CredentialsRefused),
    (404, PermanentHTTPError), (409, PermanentHTTPError), (422, PermanentHTTPError),
]


@pytest.mark.parametrize(("status", "error"), CLASSES, ids=[str(s) for s, _ in CLASSES])
@responses.activate
def test_every_failure_is_classified_in_one_place(status, error):
    responses.get(f"{BASE}/members/jane%40example.org", status=status,
                  json={"title": "x", "description": "problem with jane@example.org"})
    session = ApiSession(BASE, headers={"Authorization": "Basic SECRET-KEY"}, system="Novi")
    with pytest.raises(error) as caught:
        session.request("GET", "members/jane%40example.org", bucket="read", params={"q": "jane@example.org"})
    message = str(caught.value)
    assert str(status) in message and "GET" in message
    assert "jane" not in message and "SECRET-KEY" not in message, message
    assert caught.value.path == "/api/members/<address>"
    assert is_transient(caught.value) == issubclass(error, TransientHTTPError)
    if status in (401, 403):
        assert "key or password was refused" in message


@pytest.mark.parametrize("exc", [requests.ConnectTimeout, requests.ReadTimeout, requests.ConnectionError],
                         ids=["connect-timeout", "read-timeout", "refused"])
@responses.activate
def test_network_failures_are_transient(exc):
    responses.get(f"{BASE}/members", body=exc("boom"))
    with pytest.raises(TransientHTTPError):
        ApiSession(BASE, headers={}).request("GET", "members", bucket="read")


@responses.activate
def test_429_is_waited_out_with_retry_after_then_succeeds():
    responses.get(f"{BASE}/members", status=429, headers={"Retry-After": "7"})
    responses.get(f"{BASE}/members", status=429)
    responses.get(f"{BASE}/members", json={"ok": True})
    slept = []
    session = ApiSession(BASE, headers={}, read_retries=3, sleep=slept.append)
    assert session.request("GET", "members", bucket="read").json() == {"ok": True}
    assert slept[0] == 7.0 and 1.0 <= slept[1] <= 3.0  # Retry-After, then backoff with jitter
    assert session.calls == {"read": 3}


@responses.activate
def test_429_beyond_the_wait_budget_raises_transient():
    for _ in range(3):
        responses.get(f"{BASE}/members", status=429, headers={"Retry-After": "1"})
    session = ApiSession(BASE, headers={}, read_retries=2, sleep=lambda s: None)
    with pytest.raises(TransientHTTPError) as caught:
        session.request("GET", "members", bucket="read")
    assert caught.value.retry_after == 1.0


@responses.activate
def test_every_request_has_timeout_user_agent_and_accept():
    responses.get(f"{BASE}/members", json={})
    session = ApiSession(BASE, headers={"Authorization": "Basic k"}, timeout=(3.0, 9.0))
    seen = {}
    original = session.session.request

    def spy(method, url, **kwargs):
        seen.update(kwargs)
        return original(method, url, **kwargs)

    session.session.request = spy
    session.request("GET", "members", bucket="read")
    sent = responses.calls[0].request.headers
    assert seen["timeout"] == (3.0, 9.0)
    assert sent["User-Agent"].startswith("novi-mailman/")
    assert sent["Accept"] == "application/json"
    assert "Basic k" not in repr(session)


def test_retry_after_forms():
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("100000") == 300.0  # capped
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=lambda: 1445412480.0) == 10.0


def test_redact_path_drops_query_and_addresses():
    assert redact_path("http://x/3.1/addresses/a%40b.org?x=a@b.org") == "/3.1/addresses/<address>"
    assert redact_path("http://x/3.1/lists/l.example.org/member/a@b.org") == "/3.1/lists/l.example.org/member/<address>"


def test_throttle_spaces_requests():
    now = [0.0]
    slept = []

    def sleep(seconds):
        slept.append(round(seconds, 6))
        now[0] += seconds

    throttle = Throttle(4, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        throttle.wait()
    assert slept == [0.25, 0.25]


@responses.activate
def test_html_with_status_200_is_an_unexpected_response():
    responses.get(f"{BASE}/members", body="<html>Maintenance</html>", content_type="text/html")
    response = ApiSession(BASE, headers={}).request("GET", "members", bucket="read")
    with pytest.raises(UnexpectedResponse, match="not JSON"):
        json_body(response, "Novi")


@pytest.mark.parametrize("first", [
    {"status": 500}, {"status": 503}, {"body": requests.ConnectionError("refused")},
    {"body": requests.ReadTimeout("slow")},
], ids=["500", "503", "refused", "timeout"])
@responses.activate
def test_reads_retry_transient_failures_with_backoff(first):
    responses.get(f"{BASE}/members", **first)
    responses.get(f"{BASE}/members", json={"ok": True})
    slept = []
    session = ApiSession(BASE, headers={}, read_retries=2, sleep=slept.append)
    assert session.request("GET", "members", bucket="read").json() == {"ok": True}
    assert len(slept) == 1 and 0.5 <= slept[0] <= 1.5


@responses.activate
def test_each_retry_is_said_as_its_wait_begins():
    """Issue 29, item 3: a minute of Novi's 500s left the run's log silent."""
    responses.get(f"{BASE}/members", status=500)
    responses.get(f"{BASE}/members", status=503)
    responses.get(f"{BASE}/members", json={"ok": True})
    said: list[str] = []
    session = ApiSession(BASE, headers={}, read_retries=3, system="Novi", sleep=lambda s: None)
    session.tell = said.append
    session.request("GET", "members", bucket="read")
    assert [line.split(";")[0].rsplit(" ", 1)[1] for line in said] == ["500", "503"]
    assert said[0].endswith("(retry 1 of 3)") and said[1].endswith("(retry 2 of 3)")
    assert "trying again in " in said[0]


@responses.activate
def test_writes_are_never_retried_here():
    responses.post(f"{BASE}/members", status=503)
    session = ApiSession(BASE, headers={}, read_retries=5, sleep=lambda s: pytest.fail("slept"))
    with pytest.raises(TransientHTTPError):
        session.request("POST", "members", bucket="write")
    assert len(responses.calls) == 1


@responses.activate
def test_permanent_failures_are_not_retried():
    responses.get(f"{BASE}/members", status=404)
    session = ApiSession(BASE, headers={}, read_retries=5, sleep=lambda s: pytest.fail("slept"))
    with pytest.raises(PermanentHTTPError):
        session.request("GET", "members", bucket="read")
    assert len(responses.calls) == 1


def test_backoff_grows_and_is_capped():
    import random
    rng = random.Random(1)
    values = [backoff(a, rng) for a in range(8)]
    assert 0.5 <= values[0] <= 1.5 and 4 <= values[3] <= 12 and all(v <= 45 for v in values)


# hostile peers (issue 11, items 13 and 15) -----------------------------------------------

def test_a_gzip_bomb_is_refused_at_the_size_cap_not_inflated():
    import gzip

    from tasks.errors import UnexpectedResponse

    bomb = gzip.compress(b"[" + b" " * (40 * 1024 * 1024) + b"]")  # 40 MB of JSON in ~40 KB
    with responses.RequestsMock() as mock:
        mock.get(f"{BASE}/members", body=bomb, headers={"Content-Encoding": "gzip",
                                                       "Content-Type": "application/json"})
        session = ApiSession(BASE, headers={}, max_bytes=4 * 1024 * 1024)
        with pytest.raises(UnexpectedResponse, match="larger than 4 MB"):
            session.request("GET", "members", bucket="page")


def test_an_answer_cut_short_is_transient_and_retried():
    from requests.exceptions import ChunkedEncodingError

    with responses.RequestsMock() as mock:
        mock.get(f"{BASE}/members", body=ChunkedEncodingError("Connection broken: IncompleteRead"))
        mock.get(f"{BASE}/members", json={"ok": True})
        session = ApiSession(BASE, headers={}, read_retries=1, sleep=lambda s: None)
        assert session.request("GET", "members", bucket="page").json() == {"ok": True}


def test_json_nested_too_deep_is_an_unexpected_answer():
    from tasks.errors import UnexpectedResponse
    from tasks.http import json_body

    with responses.RequestsMock() as mock:
        mock.get(f"{BASE}/members", body="[" * 200_000 + "]" * 200_000, content_type="application/json")
        response = ApiSession(BASE, headers={}).request("GET", "members", bucket="page")
        with pytest.raises(UnexpectedResponse, match="nested too deep"):
            json_body(response, "Novi /api/members")


@pytest.mark.parametrize("location", ["file:///etc/passwd", f"{BASE}/members"], ids=["to-file", "loop"])
def test_redirects_are_not_followed_and_say_where_they_point(location):
    from tasks.errors import PermanentHTTPError

    with responses.RequestsMock() as mock:
        mock.get(f"{BASE}/members", status=302, headers={"Location": location})
        with pytest.raises(PermanentHTTPError, match="answered 302, a redirect to") as caught:
            ApiSession(BASE, headers={"Authorization": "Basic k3y-k3y-k3y"}).request("GET", "members", bucket="page")
        assert len(mock.calls) == 1 and "k3y" not in str(caught.value)


def test_a_peer_that_drips_its_answer_is_cut_off_at_the_deadline():
    """Each read within the read timeout, the whole answer not: a total deadline per request."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tasks.errors import TransientHTTPError

    class Drip(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for _ in range(1000):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    server.daemon_threads, server.block_on_close = True, False  # the dripping thread is not waited for
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        session = ApiSession(f"http://127.0.0.1:{server.server_port}", headers={}, timeout=(2.0, 2.0), deadline=1.0)
        with pytest.raises(TransientHTTPError, match="took longer than 1 s"):
            session.request("GET", "members", bucket="page")
    finally:
        server.shutdown()
        server.server_close()


@responses.activate
def test_a_halted_session_sends_nothing_more():
    responses.get(f"{BASE}/members", json={"ok": True})
    session = ApiSession(BASE, headers={})
    with halting(session) as halt:
        halt.set()  # another read of the run failed
        with pytest.raises(ReadStopped, match="another read of this run failed"):
            session.request("GET", "members", bucket="read")
    assert len(responses.calls) == 0 and session.halt is None
    assert session.request("GET", "members", bucket="read").json() == {"ok": True}  # halting is over


@responses.activate
def test_a_halt_ends_a_wait_for_a_retry_at_once():
    session = ApiSession(BASE, headers={}, read_retries=3, sleep=lambda s: pytest.fail("slept instead of waiting"))

    def fail_and_halt(request):
        halt.set()  # the other read fails while this one is answered 503
        return 503, {"Retry-After": "300"}, ""

    responses.add_callback(responses.GET, f"{BASE}/members", callback=fail_and_halt)
    with halting(session) as halt, pytest.raises(ReadStopped):
        session.request("GET", "members", bucket="read")
    assert len(responses.calls) == 1  # no retry after the halt, and no 300 s wait for one
