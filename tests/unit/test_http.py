"""The health and metrics server as a prober, a scraper and an abuser meet it."""

from __future__ import annotations

import io
import json
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from egress_router.http import MAX_CONNECTIONS, TIMEOUT, HealthServer
from egress_router.http_request import MAX_REQUEST, RequestError, parse_request
from egress_router.log import Log
from egress_router.metrics import Stats
from egress_router.network.fake import FakeLink, FakeNet
from egress_router.nft.fake import FakeNft, FakeTableReader


@pytest.mark.parametrize(
    ("head", "path"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: 198.51.100.2:9090\r\nUser-Agent: kube-probe/1.29\r\n\r\n", "/healthz"),
        (b"GET /metrics?name[]=x HTTP/1.0\r\n\r\n", "/metrics"),
        (b"GET /readyz HTTP/1.1\nHost: x\n\n", "/readyz"),  # bare LF line ends
    ],
)
def test_a_probe_or_a_scrape_is_a_request(head: bytes, path: str) -> None:
    assert parse_request(head).path == path


@pytest.mark.parametrize(
    ("head", "code"),
    [
        (b"HEAD /healthz HTTP/1.1\r\n\r\n", 501),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\n", 501),
        (b"GET /healthz HTTP/2.0\r\n\r\n", 505),
        (b"GET /healthz\r\n\r\n", 400),  # HTTP/0.9
        (b"GET  /healthz HTTP/1.1\r\n\r\n", 400),
        (b"GET healthz HTTP/1.1\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\n: empty name\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # TLS to a plain port
        (b"GET /healthz HTTP/1.1\r\nX: " + b"a" * MAX_REQUEST + b"\r\n\r\n", 431),
    ],
)
def test_anything_else_is_refused_with_a_status_that_says_why(head: bytes, code: int) -> None:
    with pytest.raises(RequestError) as caught:
        parse_request(head)
    assert caught.value.code == code


@pytest.fixture
def served() -> Iterator[tuple[HealthServer, Stats, io.StringIO]]:
    stream = io.StringIO()
    stats = Stats()
    stats.ready = True
    server = HealthServer(0, stats, FakeTableReader(FakeNft(), FakeNet(links={"macvlan0": FakeLink()})),
                          Log(debug=True, stream=stream), timeout=1.0)
    server.start()
    yield server, stats, stream
    server.stop()


def get(port: int, path: str, host: str = "127.0.0.1", timeout: float = 3.0) -> tuple[int, bytes, bytes]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), head, body


def test_paths_status_codes_and_content_types(served: tuple[HealthServer, Stats, io.StringIO]) -> None:
    server, stats, _ = served
    code, head, body = get(server.port, "/healthz")
    assert (code, body) == (200, b"ok\n")
    assert b"Content-Type: text/plain; charset=utf-8" in head and b"Content-Length: 3" in head
    assert get(server.port, "/readyz")[::2] == (200, b"ready\n")
    stats.ready = False
    assert get(server.port, "/readyz")[::2] == (503, b"not ready\n")
    code, head, body = get(server.port, "/metrics")
    assert code == 200 and f"Content-Type: {CONTENT_TYPE_LATEST}".encode() in head
    assert b"egress_router_reloads_total" in body
    assert get(server.port, "/nope")[0] == 404


def test_every_scrape_is_fresh(served: tuple[HealthServer, Stats, io.StringIO]) -> None:
    server, stats, _ = served
    assert b'egress_router_reloads_total{result="success"} 0.0' in get(server.port, "/metrics")[2]
    stats.reloaded(True)
    assert b'egress_router_reloads_total{result="success"} 1.0' in get(server.port, "/metrics")[2]


def test_both_families_on_one_socket(served: tuple[HealthServer, Stats, io.StringIO]) -> None:
    server, _, _ = served
    assert get(server.port, "/healthz", "127.0.0.1")[0] == 200
    assert get(server.port, "/healthz", "::1")[0] == 200


def test_an_idle_connection_is_dropped_after_the_timeout(served: tuple[HealthServer, Stats, io.StringIO]) -> None:
    server, _, stream = served
    with socket.create_connection(("127.0.0.1", server.port)) as idle:
        idle.settimeout(5)
        started = time.monotonic()
        assert idle.recv(1) == b""  # closed by the server, not by this timeout
        assert time.monotonic() - started >= 0.9
    assert "http timeout" in stream.getvalue()


def test_a_slow_request_within_the_timeout_is_served(served: tuple[HealthServer, Stats, io.StringIO]) -> None:
    server, _, _ = served
    with socket.create_connection(("127.0.0.1", server.port)) as slow:
        slow.settimeout(5)
        for piece in (b"GET /hea", b"lthz HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
            slow.sendall(piece)
            time.sleep(0.15)
        assert slow.recv(4096).startswith(b"HTTP/1.0 200 OK\r\n")


def test_a_slow_reader_of_the_metrics_gets_all_of_them(served: tuple[HealthServer, Stats, io.StringIO]) -> None:
    server, _, _ = served
    whole = get(server.port, "/metrics")[2]
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        sock.settimeout(5)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        data = b""
        while chunk := sock.recv(512):
            data += chunk
            time.sleep(0.002)
    assert data.partition(b"\r\n\r\n")[2].startswith(whole[:200])


def test_the_connection_cap_displaces_the_oldest_and_probes_still_answer() -> None:
    stream = io.StringIO()
    server = HealthServer(0, Stats(), FakeTableReader(FakeNft(), FakeNet()), Log(debug=True, stream=stream),
                          max_connections=8)
    server.start()
    idle = []
    try:
        for _ in range(30):
            idle.append(socket.create_connection(("127.0.0.1", server.port)))
        time.sleep(0.2)
        assert len(server.connections) <= 8
        assert get(server.port, "/healthz")[0] == 200
        assert "http connection displaced" in stream.getvalue()
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def test_clients_that_reset_leave_only_the_routers_own_log_lines(
    served: tuple[HealthServer, Stats, io.StringIO], capfd: pytest.CaptureFixture[str]
) -> None:
    server, _, stream = served
    for request in (b"", b"GET /metrics HTTP/1.1\r\n\r\n", b"GET /heal"):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(request)
        sock.close()  # a reset, at once
    with socket.create_connection(("127.0.0.1", server.port)) as tls:
        tls.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) + b"\r\n\r\n")
        assert tls.recv(4096).startswith(b"HTTP/1.0 400 Bad Request")
    assert get(server.port, "/healthz")[0] == 200
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert all(line.startswith("egress-router: ") for line in stream.getvalue().splitlines())


def test_500_idle_connections_held_and_reopened_do_not_keep_probes_out() -> None:
    stats = Stats()
    stats.ready = True
    stream = io.StringIO()
    server = HealthServer(0, stats, FakeTableReader(FakeNft(), FakeNet()), Log(stream=stream))
    server.start()
    seconds = TIMEOUT + 2.5
    abuser = subprocess.Popen(
        [sys.executable, "-m", "egress_router.lab.idle_clients", "127.0.0.1", str(server.port), "500", str(seconds)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert abuser.stdout is not None and abuser.stdout.readline().strip() == "ready"
        slowest, probes, held = 0.0, 0, 0
        deadline = time.monotonic() + seconds - 0.5
        while time.monotonic() < deadline:
            for path in ("/healthz", "/metrics"):
                started = time.monotonic()
                code, _, body = get(server.port, path, timeout=1.0)  # kubelet's default
                slowest = max(slowest, time.monotonic() - started)
                assert code == 200 and body
                probes += 1
            held = max(held, len(server.connections))
            time.sleep(0.05)
        counts = json.loads(abuser.stdout.readline())
        assert abuser.wait(10) == 0
    finally:
        abuser.kill()
        abuser.wait()
        server.stop()
    print(f"\n{probes} probes, slowest {slowest * 1e3:.0f} ms; abuser {counts}; server held at most {held}")
    assert held <= MAX_CONNECTIONS
    assert counts["dropped"] >= 500  # every one of them timed out at least once
    assert all(line.startswith("egress-router: ") for line in stream.getvalue().splitlines())


def test_ipv4_alone_where_the_kernel_has_no_ipv6(monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    real = socket.socket

    def no_ipv6(family: int = socket.AF_INET, *args: object, **kwargs: object) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "socket", no_ipv6)
    server = HealthServer(0, Stats(), FakeTableReader(FakeNft(), FakeNet()), Log(stream=io.StringIO()))
    monkeypatch.setattr(socket, "socket", real)
    server.start()
    try:
        assert server.listener.family == socket.AF_INET
        assert get(server.port, "/healthz")[0] == 200
    finally:
        server.stop()
