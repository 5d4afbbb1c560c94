"""Health and metrics over HTTP, in one thread of the daemon (imported only when the port is set).

`/healthz`: the daemon's loop is turning (kubelet restarts a pod whose loop is stuck).
`/readyz`: the current configuration is applied and the last check found the kernel holding it,
and (HA) every connection that reaches this replica is served: an active, or a standby that
knows the active to relay to.
`/metrics`: Prometheus text, built at scrape time by `metrics.Collector`.
`/ha/pod-ipv6` (HA, a pod with IPv6): this replica's IPv6 pod address, which a standby asks the
active for to relay IPv6 connections to it (the VRRP adverts name only its IPv4 address).

Any pod that reaches the router can connect to this port, so the server is built to be cheap to
abuse: one thread runs a `selectors` loop, and a connection is a small buffer with a deadline
(`http.server` gave each connection a thread, held idle ones forever, and printed its own
tracebacks into the router's log). The protocol itself is `http_request.py`'s: bytes in, a response
out, no socket there.
- A request must arrive whole, at most `MAX_REQUEST` bytes, within `TIMEOUT` seconds of its
  connection; a response must make progress every `TIMEOUT` seconds (a slow scrape is served,
  a stalled one dropped). Every response closes its connection.
- At most `MAX_CONNECTIONS` at once: one more displaces the oldest, so that a probe always gets
  in however many idle connections someone holds open.
- A scrape's body is built for it; only while several are still being sent does a new one
  share the latest, so that memory does not grow with the connections asking.
- Every log line goes through `log.Log`, in the router's own format.
"""

from __future__ import annotations

import os
import resource
import selectors
import socket
import threading
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .http_request import MAX_REQUEST, Request, RequestError, parse_request, request_end, response_head
from .log import Log
from .metrics import Collector, Stats
from .nft.listing import TableReader

# The loop ticks every half second and a check takes milliseconds; a minute without a tick is
# a stuck process, not a slow one.
ALIVE_WITHIN = 60.0
TIMEOUT = 5.0  # kubelet's probes and Prometheus send their few hundred bytes at once
# Each costs a socket and a few kB (its request buffer at most 16 kB); fewer where the process
# may open fewer files.
MAX_CONNECTIONS = 1024
BACKLOG = 1024  # the kernel caps it at net.core.somaxconn
# A scrape gets a body built for it, unless this many connections are still being sent one:
# then it shares the latest, so that a thousand connections asking for /metrics at once hold
# a few copies of it, not a thousand.
FRESH_METRICS_AT_ONCE = 2
TEXT = "text/plain; charset=utf-8"


class _Connection:
    __slots__ = ("sock", "client", "inbox", "outbox", "metrics", "deadline")

    def __init__(self, sock: socket.socket, client: str, deadline: float) -> None:
        self.sock = sock
        self.client = client
        self.inbox = bytearray()
        self.outbox: list[memoryview] = []  # what is left to send of the response
        self.metrics = False  # the response holds a metrics body
        self.deadline = deadline


class HealthServer:
    def __init__(
        self,
        port: int,
        stats: Stats,
        reader: TableReader,
        log: Log,
        max_connections: int = MAX_CONNECTIONS,
        timeout: float = TIMEOUT,
    ) -> None:
        self.stats, self.log = stats, log
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(Collector(stats, reader))
        self.max_connections = min(max_connections, _descriptors_left())
        self.timeout = timeout
        self.listener = _listen(port)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        self.selector.register(self._wake_read, selectors.EVENT_READ, "wake")
        self.connections: dict[int, _Connection] = {}  # in order of arrival: the oldest first
        self._metrics: bytes | None = None  # the latest metrics body
        self._stopping = False
        self.thread = threading.Thread(target=self._run, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stopping = True
        os.write(self._wake_write, b"x")
        self.thread.join(5)
        for connection in list(self.connections.values()):
            self._close(connection)
        self.selector.close()
        self.listener.close()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def _run(self) -> None:
        while not self._stopping:
            try:
                self._turn()
            except Exception as error:  # noqa: BLE001 -- the server must outlive any one fault
                self.log.error("health server fault", error=f"{type(error).__name__}: {error}")
                time.sleep(0.1)

    def _turn(self) -> None:
        now = time.monotonic()
        wait = min((c.deadline for c in self.connections.values()), default=now + 1.0) - now
        for key, mask in self.selector.select(max(0.0, min(wait, 1.0))):
            if key.data is None:
                self._accept()
            elif key.data == "wake":
                os.read(self._wake_read, 64)
            elif mask & selectors.EVENT_WRITE:
                self._send(key.data)
            else:
                self._receive(key.data)
        now = time.monotonic()
        for connection in [c for c in self.connections.values() if c.deadline <= now]:
            self.log.debug("http timeout", client=connection.client)
            self._close(connection)

    def _accept(self) -> None:
        for _ in range(64):  # then let the connections have a turn
            try:
                sock, address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # out of descriptors, or the client gone already
                self.log.debug("http accept failed", error=error.strerror or str(error))
                return
            if len(self.connections) >= self.max_connections:
                oldest = next(iter(self.connections.values()))
                self.log.debug("http connection displaced", client=oldest.client)
                self._close(oldest)
            sock.setblocking(False)
            connection = _Connection(sock, str(address[0]), time.monotonic() + self.timeout)
            self.connections[sock.fileno()] = connection
            self.selector.register(sock, selectors.EVENT_READ, connection)
            # A probe's request is usually there already: served now, it cannot be displaced
            # by the connections accepted after it.
            self._receive(connection)

    def _receive(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset by the client: nothing to say to it, nor about it
            self._close(connection)
            return
        if not data:
            self._close(connection)
            return
        connection.inbox += data
        end = request_end(connection.inbox)
        if end is None and len(connection.inbox) <= MAX_REQUEST:
            return
        try:
            request = parse_request(bytes(connection.inbox[:end]) if end else bytes(connection.inbox))
            code, body, kind = self._answer(request)
        except RequestError as error:
            request, code, body, kind = None, error.code, f"{error.reason}\n".encode(), TEXT
        self.log.debug(
            "http", client=connection.client, request=request.line if request else "?", status=code
        )
        connection.outbox = [memoryview(response_head(code, len(body), kind)), memoryview(body)]
        connection.metrics = kind == CONTENT_TYPE_LATEST
        connection.deadline = time.monotonic() + self.timeout
        self.selector.modify(connection.sock, selectors.EVENT_WRITE, connection)
        self._send(connection)

    def _send(self, connection: _Connection) -> None:
        outbox = connection.outbox
        try:
            sent = connection.sock.sendmsg(outbox)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(connection)
            return
        while outbox and sent >= len(outbox[0]):
            sent -= len(outbox.pop(0))
        if outbox:
            outbox[0] = outbox[0][sent:]
        connection.deadline = time.monotonic() + self.timeout  # progress: a slow reader is fine
        if not connection.outbox:
            self._close(connection, done=True)

    def _answer(self, request: Request) -> tuple[int, bytes, str]:
        if request.path == "/healthz":
            ok = self.stats.alive(ALIVE_WITHIN)
            return (200, b"ok\n", TEXT) if ok else (503, b"stuck\n", TEXT)
        if request.path == "/readyz":
            ok = self.stats.serving
            return (200, b"ready\n", TEXT) if ok else (503, b"not ready\n", TEXT)
        if request.path == "/metrics":
            return 200, self._metrics_body(), CONTENT_TYPE_LATEST
        if request.path == "/ha/pod-ipv6" and self.stats.ha is not None and self.stats.ha.pod6:
            return 200, f"{self.stats.ha.pod6}\n".encode(), TEXT  # a standby relays IPv6 to it
        return 404, b"not found\n", TEXT

    def _metrics_body(self) -> bytes:
        sending = sum(1 for c in self.connections.values() if c.metrics)
        if self._metrics is None or sending < FRESH_METRICS_AT_ONCE:
            self._metrics = generate_latest(self.registry)
        return self._metrics

    def _close(self, connection: _Connection, done: bool = False) -> None:
        sock = connection.sock
        self.connections.pop(sock.fileno(), None)
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        if done:
            try:
                # The response is out: say so before closing, and read what the client may
                # still send (a body), so that the close is not a reset that loses the response.
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):
                    pass
            except OSError:
                pass
        sock.close()


def _descriptors_left() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return MAX_CONNECTIONS if soft == resource.RLIM_INFINITY else max(8, soft - 64)


def _listen(port: int) -> socket.socket:
    """One socket for both families, so that probes reach the pod on whichever it has; IPv4
    alone where the pod has IPv6 disabled."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return _bound(socket.socket(socket.AF_INET, socket.SOCK_STREAM), ("0.0.0.0", port))
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        return _bound(sock, ("::", port))
    except OSError:
        sock.close()
        return _bound(socket.socket(socket.AF_INET, socket.SOCK_STREAM), ("0.0.0.0", port))


def _bound(sock: socket.socket, address: tuple[str, int]) -> socket.socket:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
