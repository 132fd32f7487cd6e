"""The receiver's server limits over raw sockets against a real uvicorn (serve_in_thread): request
heads and bodies that never arrive are cut off in time while /healthz keeps answering, the open
connections return to normal, and connections beyond the limit are refused."""

import selectors
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
import pytest

from ohx_dagster.config.receiver import ReceiverLimits, WebhookSecrets
from ohx_dagster.receiver.app import create_app
from ohx_dagster.receiver.serve import serve_in_thread
from ohx_dagster.receiver.simulator import signed_request
from ohx_dagster.storage.store import RecordStore

SECRET = "serve-test-secret"
SECRETS = WebhookSecrets(simulated_secret=SECRET)
NOTHING = {"pending": 0, "dispatched": 0, "ignored": 0}
# Headers complete, body promised but only partly sent.
HALF_SENT = (
    b"POST /webhooks/simulated HTTP/1.1\r\nhost: receiver\r\n"
    b"content-type: application/json\r\ncontent-length: 200\r\n\r\n"
    b'{"event_id": "half", "user_id": '
)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[RecordStore]:
    store = RecordStore(f"sqlite:///{tmp_path / 'ohx.db'}")
    yield store
    store.dispose()


def served(store: RecordStore, limits: ReceiverLimits):
    app = create_app(store, SECRETS, limits=limits)
    return app, serve_in_thread(app, limits=limits)


def server_side_connections(port: int) -> int:
    """This process's sockets on the server's end of `port` (the listener excluded)."""
    return sum(
        1
        for c in psutil.Process().net_connections("tcp")
        if c.laddr and c.laddr.port == port and c.status != psutil.CONN_LISTEN
    )


def wait_until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def read_until_closed(
    sockets: dict[socket.socket, float], timeout_s: float
) -> dict[socket.socket, tuple[bytes, float]]:
    """Everything each socket receives until the server closes it, and the seconds from its
    start time (the dict's value) to the close. Sockets still open after `timeout_s` are left
    out of the answer."""
    selector = selectors.DefaultSelector()
    received: dict[socket.socket, bytearray] = {}
    for sock in sockets:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        received[sock] = bytearray()
    closed: dict[socket.socket, tuple[bytes, float]] = {}
    deadline = time.monotonic() + timeout_s
    while len(closed) < len(sockets) and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.1):
            sock = key.fileobj
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if chunk:
                received[sock] += chunk
            else:
                selector.unregister(sock)
                closed[sock] = (bytes(received[sock]), time.monotonic() - sockets[sock])
    selector.close()
    return closed


def test_half_sent_requests_are_cut_off_within_the_body_timeout(sqlite_store):
    """2,000 clients send headers and part of a body, then nothing: each gets 408 and its
    connection closed once the body timeout passes, /healthz answers meanwhile, and the server's
    connections and this process's file descriptors come back to where they were."""
    count, timeout_s = 2_000, 4.0
    limits = ReceiverLimits(
        body_timeout_s=timeout_s,
        max_connections=count + 100,
        max_connections_per_address=0,  # all from one address here: see the cap's own test
        rate_per_minute=0,
    )
    app, server = served(sqlite_store, limits)
    process = psutil.Process()
    with server as url, httpx.Client(timeout=10) as http:
        port = httpx.URL(url).port
        assert http.get(f"{url}/healthz").status_code == 200  # one keep-alive connection
        baseline, fds = server_side_connections(port), process.num_fds()
        sockets: dict[socket.socket, float] = {}
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(HALF_SENT)
            sockets[sock] = time.monotonic()
        opened = time.monotonic() - min(sockets.values())
        started = time.monotonic()
        health = http.get(f"{url}/healthz")
        health_s = time.monotonic() - started
        # Held open at once: the server's accepted sockets are the file descriptors beyond ours
        # (counting them is cheap; the server accepts from its backlog meanwhile).
        held = 0
        while time.monotonic() - started < timeout_s * 0.6:
            held = max(held, process.num_fds() - fds - count)
            time.sleep(0.05)
        closed = read_until_closed(sockets, timeout_s=timeout_s + 10)
        for sock in sockets:
            sock.close()
        answers = [data for data, _ in closed.values()]
        seconds = sorted(after for _, after in closed.values())
        # Bounds relative to the timeout, not wall-clock targets: every connection is half-open
        # before the first is cut off, and /healthz answers while they are all held.
        assert health.status_code == 200 and health_s < timeout_s / 2, health_s
        assert opened < timeout_s * 0.75 and held > count // 2, (opened, held)
        assert len(closed) == count
        assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), {a[:40] for a in answers}
        assert b"request body not received within 4 s" in answers[0]
        # Cut off once the timeout passed: not before, and not much after.
        assert timeout_s - 0.1 < seconds[0] and seconds[-1] < timeout_s + 3.0, seconds[::400]
        assert wait_until(lambda: server_side_connections(port) == baseline, 5)
        assert wait_until(lambda: process.num_fds() <= fds + 2, 5), (process.num_fds(), fds)
        raw, headers = signed_request(SECRET, "sim-001", "steps", datetime.now(UTC))
        after = http.post(f"{url}/webhooks/simulated", content=raw, headers=headers)
        assert after.status_code == 200
    assert app.state.inbox.counts()["pending"] == 1


def test_request_heads_that_never_complete_are_cut_off_within_the_header_timeout(sqlite_store):
    """uvicorn has no such timeout: a silent connection, a head sent in pieces, and the rest of
    a body the app already answered (here 404) trickling in are each cut off with 408 once the
    header timeout passes; the same connection stays usable for as long as it makes progress."""
    timeout_s = 0.6
    limits = ReceiverLimits(
        header_timeout_s=timeout_s,
        keep_alive_s=30,
        max_connections_per_address=0,
        rate_per_minute=0,
    )
    app, server = served(sqlite_store, limits)
    with server as url:
        port = httpx.URL(url).port
        silent, pieces, trickle = [], [], []
        sockets: dict[socket.socket, float] = {}
        for group in (silent, pieces, trickle):
            for _ in range(50):
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                sockets[sock] = time.monotonic()
                group.append(sock)
        for sock in pieces:
            sock.sendall(b"POST /webhooks/simulated HTTP/1.1\r\n")
        early = b"POST /webhooks/none HTTP/1.1\r\nhost: receiver\r\ncontent-length: 1000\r\n\r\n"
        for sock in trickle:
            sock.sendall(early + b"0123456789")
            assert sock.recv(4096).startswith(b"HTTP/1.1 404 ")
            sockets[sock] = time.monotonic()  # its deadline starts with the next byte
        time.sleep(timeout_s / 3)
        for sock in pieces:
            sock.sendall(b"host: receiver\r\n")  # progress, but the head is still not complete
        for sock in trickle:
            sock.sendall(b"0123456789")  # more of the body nobody reads any more
        closed = read_until_closed(sockets, timeout_s=timeout_s + 10)
        for sock in sockets:
            sock.close()
        assert len(closed) == len(sockets)
        for group, name in ((silent, "silent"), (pieces, "pieces"), (trickle, "trickle")):
            answers = {closed[sock][0][:24] for sock in group}
            assert answers == {b"HTTP/1.1 408 Request Tim"}, (name, answers)
            seconds = sorted(closed[sock][1] for sock in group)
            assert timeout_s * 0.9 < seconds[0] and seconds[-1] < timeout_s + 2.0, (name, seconds)
        # A client that keeps sending complete requests is never cut: three on one connection,
        # each sent after longer than the header timeout without a byte.
        with httpx.Client(timeout=10) as http:
            for _ in range(3):
                assert http.get(f"{url}/healthz").status_code == 200
                time.sleep(timeout_s * 1.5)
            assert http.get(f"{url}/healthz").status_code == 200
    assert app.state.inbox.counts() == NOTHING


def test_connections_beyond_the_limit_get_503_until_some_close(sqlite_store):
    limits = ReceiverLimits(
        max_connections=20, max_connections_per_address=0, header_timeout_s=10, rate_per_minute=0
    )
    _, server = served(sqlite_store, limits)
    with server as url:
        port = httpx.URL(url).port
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
        assert wait_until(lambda: server_side_connections(port) >= 20, 5)
        with httpx.Client(timeout=10) as http:
            refused = http.get(f"{url}/healthz")
            assert refused.status_code == 503
            assert refused.headers["connection"] == "close"
        for sock in idle:
            sock.close()

        def served_again() -> bool:
            with httpx.Client(timeout=10) as http:
                return http.get(f"{url}/healthz").status_code == 200

        assert wait_until(served_again, 5)


def test_one_address_cannot_hold_more_than_its_share_of_connections(sqlite_store):
    """Beyond the cap a client's new connection is refused at once (503), so a single client
    cannot fill the server's connection limit; other addresses, and trusted proxies, are served."""
    limits = ReceiverLimits(max_connections=100, max_connections_per_address=10)
    _, server = served(sqlite_store, limits)
    other = httpx.HTTPTransport(local_address="127.0.0.2")
    with server as url, httpx.Client(timeout=10, transport=other) as second:
        port = httpx.URL(url).port
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(10)]
        assert wait_until(lambda: server_side_connections(port) >= 10, 5)
        refused: dict[socket.socket, float] = {}
        for _ in range(20):
            refused[socket.create_connection(("127.0.0.1", port), timeout=10)] = time.monotonic()
        closed = read_until_closed(refused, timeout_s=5)
        assert len(closed) == 20
        assert all(data.startswith(b"HTTP/1.1 503 ") for data, _ in closed.values())
        assert max(seconds for _, seconds in closed.values()) < 1.0  # at once, not at a timeout
        assert second.get(f"{url}/healthz").status_code == 200  # another address is served
        for sock in [*held, *refused]:
            sock.close()
        with httpx.Client(timeout=10) as first:
            assert wait_until(lambda: first.get(f"{url}/healthz").status_code == 200, 5)

    behind_proxy = ReceiverLimits(max_connections_per_address=2, trusted_proxies=("127.0.0.1",))
    _, server = served(sqlite_store, behind_proxy)
    with server as url:
        port = httpx.URL(url).port
        proxy = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(5)]
        with httpx.Client(timeout=10) as http:
            assert http.get(f"{url}/healthz").status_code == 200  # the 6th from the proxy
        for sock in proxy:
            sock.close()


def test_clients_that_leave_mid_body_leave_no_traceback(sqlite_store, capfd):
    """Hanging up before the body arrived is the client's business: no error is logged for it
    (a traceback per request would let any client fill the log)."""
    _, server = served(sqlite_store, ReceiverLimits(rate_per_minute=0))
    with server as url:
        port = httpx.URL(url).port
        for _ in range(10):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(HALF_SENT)
                assert wait_until(lambda: server_side_connections(port) == 1, 5)
        assert wait_until(lambda: server_side_connections(port) == 0, 5)
        assert httpx.get(f"{url}/healthz").status_code == 200
    logged = capfd.readouterr().err
    assert "Traceback" not in logged and "Exception in ASGI application" not in logged, logged
