"""The webhook relay: who may call it, what it accepts, and how a burst becomes a few hand-offs."""

from __future__ import annotations

import logging
import threading
import time
import uuid

import pytest
from fastapi.testclient import TestClient

from tasks.relay import MAX_BODY, TOKEN_HEADER, MemberQueue, Relay, create_app, flush_forever

TOKEN = "relay-token-0123456789abcdef"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def relay():
    handed: list[list[str]] = []
    relay = Relay(TOKEN, handed.append, MemberQueue(window=30, max_batch=50, clock=Clock()))
    relay.handed = handed
    return relay


@pytest.fixture
def api(relay):
    return TestClient(create_app(relay))


def event(member_id=None, name="customer.updated"):
    return {"event": name, "entityUniqueId": member_id or str(uuid.uuid4())}


@pytest.mark.parametrize(("path", "headers", "status"), [
    ("/novi", {}, 401),
    ("/novi/wrong-token-0123456789", {}, 401),
    ("/novi", {TOKEN_HEADER: "wrong-token-0123456789"}, 401),
    (f"/novi/{TOKEN}", {}, 202),
    ("/novi", {TOKEN_HEADER: TOKEN}, 202),
], ids=["missing", "wrong-in-path", "wrong-in-header", "right-in-path", "right-in-header"])
def test_caller_must_hold_the_token(api, relay, path, headers, status):
    assert api.post(path, json=event(), headers=headers).status_code == status
    assert len(relay.queue) == (1 if status == 202 else 0)


@pytest.mark.parametrize(("body", "status"), [
    (b"x" * (MAX_BODY + 1), 413),
    (b"{not json", 400),
    (b"[1, 2]", 400),
    (b'{"entityUniqueId": "5a1d0000-0000-4000-8000-000000000001"}', 400),
    (b'{"event": "customer.updated", "entityUniqueId": "../../etc/passwd"}', 400),
    (b'{"event": "customer.updated", "entityUniqueId": 7}', 400),
], ids=["too-large", "malformed", "not-an-object", "no-event", "not-a-guid", "id-not-text"])
def test_bad_bodies_are_refused(api, relay, body, status):
    response = api.post(f"/novi/{TOKEN}", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status
    assert len(relay.queue) == 0 and relay.counts["refused"] == 1


def test_unknown_events_are_accepted_and_ignored(api, relay):
    response = api.post(f"/novi/{TOKEN}", json=event(name="invoice.paid"))
    assert response.status_code == 202 and len(relay.queue) == 0 and relay.counts["ignored"] == 1


def test_prefect_unreachable_answers_503_so_the_sender_retries(relay, caplog):
    relay.reachable = lambda: False
    api = TestClient(create_app(relay))
    with caplog.at_level(logging.ERROR, logger="novi_mailman.relay"):
        assert api.post(f"/novi/{TOKEN}", json=event()).status_code == 503
    assert len(relay.queue) == 0 and "unreachable" in caplog.text
    assert api.get("/health").json()["ok"] is False


def test_a_burst_becomes_a_few_bounded_hand_offs_and_loses_nobody(api, relay):
    members = [str(uuid.uuid4()) for _ in range(200)]
    for i in range(1000):  # 1,000 webhooks for 200 members
        assert api.post(f"/novi/{TOKEN}", json=event(members[i % 200])).status_code == 202
    assert len(relay.queue) == 200
    assert relay.flush() == 0  # nobody has been quiet for a whole window yet
    relay.queue._clock.now += 31
    assert relay.flush() == 200
    assert [len(batch) for batch in relay.handed] == [50, 50, 50, 50]
    assert sorted(m for batch in relay.handed for m in batch) == sorted(members)


def test_a_new_event_restarts_the_members_window():
    clock = Clock()
    queue = MemberQueue(window=30, clock=clock)
    member = str(uuid.uuid4())
    queue.add(member)
    clock.now += 20
    queue.add(member)
    clock.now += 20
    assert queue.take_due() == []
    clock.now += 11
    assert queue.take_due() == [member]


def due_members_and_prefect_down(relay, n: int) -> list[str]:
    """n members queued and quiet for a whole window; every hand-off fails."""
    members = [str(uuid.uuid4()) for _ in range(n)]
    for m in members:
        relay.queue.add(m)
    relay.queue._clock.now += 31

    def down(batch):
        raise ConnectionError("Prefect is down")

    relay.handoff = down
    return members


def test_a_failed_hand_off_keeps_the_members(relay):
    members = due_members_and_prefect_down(relay, 3)
    with pytest.raises(ConnectionError):
        relay.flush()
    assert len(relay.queue) == 3 and relay.counts["handoff_failures"] == 1
    relay.handoff = relay.handed.append
    assert relay.flush() == 3 and sorted(relay.handed[0]) == sorted(members)


def test_health_counts(api):
    api.post(f"/novi/{TOKEN}", json=event())
    api.post("/novi", json=event())
    assert api.get("/health").json() == {"ok": True, "queued": 1, "accepted": 1, "ignored": 0, "refused": 1,
                                         "handed_off": 0, "handoff_failures": 0, "full_syncs": 0, "connections_closed": 0}


def test_a_bulk_import_becomes_one_full_sync(relay):
    full_syncs: list[list[str]] = []
    relay.full_sync, relay.full_sync_above = full_syncs.append, 100
    members = [str(uuid.uuid4()) for _ in range(150)]
    for m in members:
        relay.queue.add(m)
    relay.queue._clock.now += 31
    assert relay.flush() == 150
    assert relay.handed == [] and len(full_syncs) == 1 and sorted(full_syncs[0]) == sorted(members)
    assert relay.counts["full_syncs"] == 1 and len(relay.queue) == 0


def test_short_tokens_are_refused():
    with pytest.raises(ValueError):
        Relay("short", lambda batch: None)


def test_prefect_probe_asks_at_most_every_ttl(prefect_server):
    from prefect.settings import PREFECT_API_URL

    from tasks.relay import PrefectProbe

    clock = Clock()
    live = PrefectProbe(PREFECT_API_URL.value(), ttl=5, clock=clock)
    assert live.refresh() is True and live() is True
    dead = PrefectProbe("http://127.0.0.1:9/api", ttl=5, clock=clock)
    assert dead.refresh() is False
    dead.health_url = live.health_url  # it would answer now, but the last answer is still fresh
    assert dead() is False
    clock.now += 5
    dead()  # stale: one refresh starts in the background
    deadline = time.monotonic() + 10
    while not dead() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dead() is True



def test_the_flush_loop_outlives_failed_hand_offs_but_not_a_bug(relay):
    due_members_and_prefect_down(relay, 2)
    stop = threading.Event()
    loop = threading.Thread(target=flush_forever, args=(relay,), kwargs={"every": 0.01, "stop": stop})
    loop.start()
    deadline = time.monotonic() + 5
    while relay.counts["handoff_failures"] < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    loop.join(5)
    assert not loop.is_alive() and relay.counts["handoff_failures"] >= 3 and len(relay.queue) == 2

    def bug():
        raise RuntimeError("a bug, not an outage")

    relay.queue.count_due = bug
    relay.full_sync = relay.handed.append  # flush asks count_due only when a full sync is possible
    raised: list[BaseException] = []

    def run() -> None:
        try:
            flush_forever(relay, every=0.01, stop=stop2)
        except RuntimeError as exc:
            raised.append(exc)

    stop2 = threading.Event()
    loop = threading.Thread(target=run)
    loop.start()
    loop.join(2)
    stop2.set()  # a loop that swallowed the bug would still be running: stop it, then fail below
    loop.join(5)
    assert [str(e) for e in raised] == ["a bug, not an outage"]


# hardening (issue 11, items 6-11) ---------------------------------------------------------

@pytest.fixture
def served(relay):
    """The relay's real server (uvicorn, the guarded protocol) on a free port, in a thread."""
    from tasks import relay as webhooks

    sock = webhooks.bind("127.0.0.1", 0)
    server = webhooks.make_server(relay)
    serving = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    serving.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield sock.getsockname()[1]
    server.should_exit = True
    serving.join(10)


def test_a_chunked_body_is_not_read_past_the_limit(relay, served):
    """1,000 MiB sent without Content-Length was buffered whole (1,141 MiB resident), then 413."""
    import requests

    sent = []

    def upload():
        for _ in range(1000):
            sent.append(1)
            yield b"x" * (1024 * 1024)

    try:
        response = requests.post(f"http://127.0.0.1:{served}/novi/{TOKEN}", data=upload(), timeout=30)
        assert response.status_code == 413
    except requests.ConnectionError:
        pass  # the relay answered 413 and closed the connection while the sender still sent
    assert len(sent) < 100 and len(relay.queue) == 0  # it stopped reading after the first 2 KiB


def test_deeply_nested_json_with_the_token_is_a_400(api, relay):
    assert api.post(f"/novi/{TOKEN}", content=b"[" * 1000).status_code == 400


def test_no_redirect_off_the_routes(api):
    response = api.post(f"/novi/{TOKEN}/", json=event(), headers={"Host": "evil.example"}, follow_redirects=False)
    assert response.status_code == 404 and "location" not in response.headers
    assert api.post("/novi/x/", json=event(), follow_redirects=False).status_code == 404


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"queue": MemberQueue(max_batch=0)}, "--max-batch"),
    ({"queue": MemberQueue(max_batch=5000)}, "--max-batch"),
    ({"queue": MemberQueue(window=-1)}, "--window"),
    ({"queue": MemberQueue(window=float("nan"))}, "--window"),  # never due: the relay never handed off
    ({"queue": MemberQueue(window=float("inf"))}, "--window"),
    ({"full_sync_above": -1}, "--full-sync-above"),
], ids=["batch-0", "batch-5000", "window-negative", "window-nan", "window-inf", "full-sync-negative"])
def test_options_that_cannot_work_are_refused_at_start(kwargs, says):
    from tasks.relay import RelayError

    with pytest.raises(RelayError, match=says):
        Relay(TOKEN, lambda batch: None, **kwargs)


def test_a_port_in_use_is_one_clear_error_not_the_refused_code():
    import socket

    from tasks.relay import RelayError, bind

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(RelayError, match="cannot listen on 127.0.0.1"):
            bind("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()


def test_the_relay_refuses_to_start_without_its_deployments(prefect_server, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import EXIT_FAILED, app

    monkeypatch.setenv("NOVI_MAILMAN_RELAY_TOKEN", TOKEN)
    result = CliRunner().invoke(app, ["relay", "--port", "0", "--deployment", "sync-member/nosuch"])
    assert result.exit_code == EXIT_FAILED and "no deployment sync-member/nosuch" in result.output


def test_the_probe_never_makes_a_request_wait(prefect_server):
    """A Prefect API that accepts and never answers: asking must not block the caller."""
    import socket

    from tasks.relay import PrefectProbe

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        probe = PrefectProbe(f"http://127.0.0.1:{silent.getsockname()[1]}/api", ttl=0.0, timeout=2.0)
        started = time.monotonic()
        answers = [probe() for _ in range(50)]
        assert time.monotonic() - started < 0.5 and not any(answers)
    finally:
        silent.close()


@pytest.fixture
def quick_timeout(monkeypatch):
    from tasks import relay as webhooks

    monkeypatch.setattr(webhooks, "EXCHANGE_TIMEOUT", 0.5)
    monkeypatch.setattr(webhooks, "say_once", webhooks._Once())


def test_idle_sockets_are_closed_and_a_flood_is_logged_once(relay, quick_timeout, served, caplog):
    import socket

    import requests

    port = served
    if True:
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(60)]
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"POST /novi HTTP/1.1\r\nHost: x\r\n")  # headers that never end
        time.sleep(1.5)
        for s in [*idle, slow]:
            s.settimeout(2)
            assert s.recv(100) == b""  # closed by the relay
            s.close()
        ok = requests.post(f"http://127.0.0.1:{port}/novi/{TOKEN}", json=event(), timeout=5)
        assert ok.status_code == 202
        assert relay.counts["connections_closed"] >= 61
        flood = [r for r in caplog.records if "idle or slow" in r.getMessage()]
        assert len(flood) == 1


def test_a_caller_that_disconnects_mid_body_is_a_quiet_line_not_a_traceback(relay, served, caplog):
    import socket

    import requests

    caplog.set_level(logging.DEBUG)
    caller = socket.create_connection(("127.0.0.1", served))
    caller.sendall(f"POST /novi/{TOKEN} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   "Content-Length: 1000\r\n\r\n{\"event\": ".encode())
    time.sleep(0.3)
    caller.close()  # gone before the body ended
    time.sleep(0.5)
    assert requests.post(f"http://127.0.0.1:{served}/novi/{TOKEN}", json=event(), timeout=5).status_code == 202
    assert not any(r.exc_info for r in caplog.records), [r.getMessage() for r in caplog.records if r.exc_info]
    assert "Traceback" not in caplog.text and len(relay.queue) == 1
