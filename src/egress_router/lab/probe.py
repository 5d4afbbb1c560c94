"""Client side of the lab's traffic: one-shot probes and long-lived streams.

The reporting servers (`egress_router.lab.servers`) answer every TCP connection and every UDP
datagram with one line, `peer=<address>:<port> local=<address>:<port>`. The peer is what the
tests are about: it is the source address the outside world saw, which must be the router's
reserved address, never the client's.

Every function here takes an already created socket (made in the client namespace by the lab),
so nothing in this module knows about namespaces. Every wait is bounded by a timeout and every
retry by a count.
"""

from __future__ import annotations

import errno
import socket
import time
from dataclasses import dataclass
from typing import Self

UDP_ATTEMPTS = 3
MAX_LINE = 256


@dataclass(frozen=True)
class Probe:
    """What one connection attempt found out."""

    ok: bool
    source: str | None = None  # the peer address the external server saw
    server: tuple[str, int] | None = None  # the address and port of the server that answered
    error: str | None = None  # "refused", "timeout", "unreachable", "reset", or the OS's words

    def __str__(self) -> str:
        if not self.ok:
            return f"failed: {self.error}"
        assert self.server is not None
        return f"reached {format_endpoint(*self.server)}, which saw source {self.source}"


def format_endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def parse_endpoint(text: str) -> tuple[str, int]:
    address, _, port = text.rpartition(":")
    return address.strip("[]"), int(port)


def report_line(peer: tuple[str, int], local: tuple[str, int]) -> bytes:
    """The servers' answer; `peer` and `local` as returned by getpeername()/getsockname()."""
    return f"peer={format_endpoint(peer[0], peer[1])} local={format_endpoint(local[0], local[1])}\n".encode()


def parse_report(line: bytes) -> Probe:
    fields = dict(
        word.split("=", 1) for word in line.decode(errors="replace").split() if "=" in word
    )
    if "peer" not in fields or "local" not in fields:
        return Probe(False, error=f"unexpected answer {line[:80]!r}")
    return Probe(
        True, source=parse_endpoint(fields["peer"])[0], server=parse_endpoint(fields["local"])
    )


def describe_error(error: OSError) -> str:
    if isinstance(error, TimeoutError):
        return "timeout"
    words = {
        errno.ECONNREFUSED: "refused",
        errno.ECONNRESET: "reset",
        errno.EHOSTUNREACH: "unreachable",
        errno.ENETUNREACH: "unreachable",
    }
    return words.get(error.errno or 0, error.strerror or str(error))


def _read_line(sock: socket.socket) -> bytes:
    """One line, byte by byte: whatever follows it (echoed data) stays in the socket."""
    data = bytearray()
    while not data.endswith(b"\n") and len(data) < MAX_LINE:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionResetError(errno.ECONNRESET, "closed before the report line")
        data += chunk
    return bytes(data)


def probe_tcp(
    sock: socket.socket, address: str, port: int, timeout: float, payload: bytes = b""
) -> Probe:
    """Connect, read the server's report, optionally send `payload` and check it comes back."""
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
            probe = parse_report(_read_line(sock))
            if probe.ok and payload:
                sock.sendall(payload)
                echoed = _read_exactly(sock, len(payload))
                if echoed != payload:
                    return Probe(False, probe.source, probe.server, "payload not echoed")
            return probe
        except OSError as error:
            return Probe(False, error=describe_error(error))


def probe_udp(
    sock: socket.socket, address: str, port: int, timeout: float, payload: bytes = b""
) -> Probe:
    """Send a datagram and wait for the report; a few attempts in case one is lost while the
    path's neighbours are being resolved. An ICMP port unreachable reads as "refused"."""
    with sock:
        per_attempt = timeout / UDP_ATTEMPTS
        sock.settimeout(per_attempt)
        try:
            sock.connect((address, port))
            for _ in range(UDP_ATTEMPTS):
                sock.send(payload or b"probe\n")
                try:
                    return parse_report(sock.recv(MAX_LINE))
                except TimeoutError:
                    continue
            return Probe(False, error="timeout")
        except OSError as error:
            return Probe(False, error=describe_error(error))


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


class Stream:
    """A long-lived TCP connection through the router, e.g. to show that a reload does not cut
    established connections. `report` is what the server said when the connection opened."""

    def __init__(self, sock: socket.socket, address: str, port: int, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
            self.report = parse_report(_read_line(sock))
        except BaseException:
            sock.close()
            raise

    @property
    def source(self) -> str | None:
        return self.report.source

    def exchange(self, data: bytes, timeout: float | None = None) -> bytes:
        """Send `data` and return what came back (the server echoes it). Raises OSError
        (ConnectionError, TimeoutError) when the connection is broken."""
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        self.sock.sendall(data)
        return _read_exactly(self.sock, len(data))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- HTTP, as kubelet probes a pod ------------------------------------------------------------


@dataclass(frozen=True)
class HttpReply:
    """An HTTP GET's outcome: the status and body, or why there was none."""

    status: int | None = None
    body: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 400


def http_get(
    sock: socket.socket, source: str | None, address: str, port: int, path: str, timeout: float
) -> HttpReply:
    """GET `path` from `source` (bound, as kubelet's probes leave from the node's address;
    None: whatever the route gives)."""
    with sock:
        sock.settimeout(timeout)
        try:
            if source is not None:
                sock.bind((source, 0))
            sock.connect((address, port))
            host = format_endpoint(address, port)
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            answer = _read_to_end(sock, MAX_HTTP)
        except OSError as error:
            return HttpReply(error=describe_error(error))
    head, _, body = answer.partition(b"\r\n\r\n")
    words = head.split(b"\r\n", 1)[0].split()
    if len(words) < 2 or not words[1].isdigit():
        return HttpReply(error=f"not an HTTP answer: {answer[:80]!r}")
    return HttpReply(int(words[1]), body.decode(errors="replace"))


MAX_HTTP = 1 << 20


def _read_to_end(sock: socket.socket, limit: int) -> bytes:
    data = bytearray()
    while len(data) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return bytes(data)


# -- bulk transfers (MTU and MSS tests) ---------------------------------------------------------

# Bounds of one transfer, on both sides: a broken path must cost a test seconds, not minutes.
MAX_TRANSFER = 256 << 20
CHUNK = 65536


@dataclass(frozen=True)
class Transfer:
    """A bulk transfer's outcome: `size` bytes asked, `moved` the count that arrived (for an
    upload, the count the sink reported), `source` the client address the server saw."""

    size: int
    moved: int = 0
    seconds: float = 0.0
    source: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.moved == self.size


def download(sock: socket.socket, address: str, port: int, size: int, timeout: float) -> Transfer:
    """Ask a `source` server for `size` bytes and count them until it closes or `timeout`."""
    _check_size(size)
    started = time.monotonic()
    deadline = started + timeout
    moved, source = 0, None
    with sock:
        try:
            sock.settimeout(timeout)
            sock.connect((address, port))
            source = parse_report(_read_line(sock)).source
            sock.sendall(f"{size}\n".encode())
            while moved < size:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(CHUNK)
                if not chunk:
                    break
                moved += len(chunk)
        except OSError as error:
            return Transfer(size, moved, time.monotonic() - started, source, describe_error(error))
    return Transfer(size, moved, time.monotonic() - started, source)


def upload(sock: socket.socket, address: str, port: int, size: int, timeout: float) -> Transfer:
    """Send `size` bytes to a `sink` server, then read the count it received."""
    _check_size(size)
    started = time.monotonic()
    deadline = started + timeout
    block = bytes(CHUNK)
    sent, source = 0, None
    with sock:
        try:
            sock.settimeout(timeout)
            sock.connect((address, port))
            source = parse_report(_read_line(sock)).source
            while sent < size:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                sent += sock.send(block[: min(CHUNK, size - sent)])
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            words = _read_line(sock).decode(errors="replace").strip().split("=", 1)
        except OSError as error:
            return Transfer(size, 0, time.monotonic() - started, source, describe_error(error))
    if len(words) != 2 or words[0] != "received" or not words[1].isdigit():
        return Transfer(size, 0, time.monotonic() - started, source, f"unexpected answer {words}")
    return Transfer(size, int(words[1]), time.monotonic() - started, source)


def _check_size(size: int) -> None:
    if not 0 < size <= MAX_TRANSFER:
        raise ValueError(f"a transfer is 1 to {MAX_TRANSFER} bytes, not {size}")


# -- path MTU, as a sender learns it -----------------------------------------------------------

# <linux/in.h>, <linux/in6.h>: Python's socket module does not name these.
IP_MTU_DISCOVER, IP_MTU, IP_PMTUDISC_DO = 10, 14, 2
IPV6_MTU_DISCOVER, IPV6_MTU, IPV6_PMTUDISC_DO = 23, 24, 2
DISCARD_PORT = 9


def learn_path_mtu(sock: socket.socket, address: str, size: int, wait: float = 0.3) -> int:
    """Send a few `size`-byte UDP datagrams with "don't fragment" to `address` and return the
    path MTU the kernel believes afterwards: smaller than the first hop's only if an ICMP
    "fragmentation needed" / "packet too big" came back."""
    v6 = sock.family == socket.AF_INET6
    level = socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP
    option, mtu, value = (
        (IPV6_MTU_DISCOVER, IPV6_MTU, IPV6_PMTUDISC_DO)
        if v6
        else (IP_MTU_DISCOVER, IP_MTU, IP_PMTUDISC_DO)
    )
    header = 48 if v6 else 28
    with sock:
        sock.setsockopt(level, option, value)
        sock.connect((address, DISCARD_PORT))
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                sock.send(bytes(size - header))
            except OSError:
                pass  # EMSGSIZE once the smaller MTU is known; an ICMP error otherwise
            time.sleep(0.05)
        return int(sock.getsockopt(level, mtu))
