"""Reporting servers for the lab's outside world: one process, many endpoints, one selector.

    python -m egress_router.lab.servers [--max-seconds N] 203.0.113.25:80/tcp [2001:db8:2::25]:53/udp ...

Each TCP connection gets one line, `peer=<address>:<port> local=<address>:<port>`, and then
everything it sends is echoed back (so a long-lived connection can keep exchanging data). Each
UDP datagram gets the same line as its answer. Three more kinds of TCP endpoint:
- `http`: answers any request with `200` and the same line as its body (a pod's health port,
  as kubelet probes it);
- `source`: the line, then reads a byte count `N\n` and sends N bytes (a download);
- `sink`: the line, then counts what arrives until the client shuts its side, and answers
  `received=N` (an upload).
Transfers are bounded in size (probe.MAX_TRANSFER), and never block the other endpoints. The process writes `ready` on stdout once every
endpoint listens, and leaves when its stdin closes (the lab that started it is gone) or after
`--max-seconds`, so that it can never outlive a test run for long.
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import sys
import time

from .probe import CHUNK, MAX_TRANSFER, format_endpoint, parse_endpoint, report_line

DEFAULT_MAX_SECONDS = 3600.0
BUFFER = 65536
PROTOCOLS = ("tcp", "udp", "http", "source", "sink")
STREAM_PROTOCOLS = ("tcp", "http", "source", "sink")
MAX_REQUEST = 4096


def parse_spec(text: str) -> tuple[str, int, str]:
    """`203.0.113.25:80/tcp` -> ("203.0.113.25", 80, "tcp")."""
    endpoint, _, protocol = text.rpartition("/")
    if protocol not in PROTOCOLS:
        raise ValueError(f"{text!r}: protocol must be one of {', '.join(PROTOCOLS)}")
    address, port = parse_endpoint(endpoint)
    return address, port, protocol


def format_spec(address: str, port: int, protocol: str) -> str:
    return f"{format_endpoint(address, port)}/{protocol}"


def open_listener(address: str, port: int, protocol: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    kind = socket.SOCK_STREAM if protocol in STREAM_PROTOCOLS else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    if kind == socket.SOCK_STREAM:
        sock.listen(128)
    sock.setblocking(False)
    return sock


class Server:
    def __init__(self, listeners: list[tuple[socket.socket, str]]) -> None:
        self.selector = selectors.DefaultSelector()
        self.transfers: dict[socket.socket, _Transfer] = {}
        accept = {
            "tcp": self._accept,
            "http": self._http,
            "source": self._accept_source,
            "sink": self._accept_sink,
        }
        for sock, protocol in listeners:
            handler = accept.get(protocol, self._datagram)
            self.selector.register(sock, selectors.EVENT_READ, handler)
        self.running = True

    def watch_stdin(self) -> None:
        self.selector.register(sys.stdin.buffer, selectors.EVENT_READ, self._stdin)

    def run(self, max_seconds: float) -> None:
        deadline = time.monotonic() + max_seconds
        while self.running and time.monotonic() < deadline:
            for key, _ in self.selector.select(
                timeout=min(1.0, max(0.0, deadline - time.monotonic()))
            ):
                key.data(key.fileobj)

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, peer = listener.accept()
        except BlockingIOError:
            return
        # Blocking with a short timeout: the lab's clients read what they are sent, and a
        # stuck one must not stall the other endpoints for long.
        conn.settimeout(2.0)
        try:
            conn.sendall(report_line(peer, conn.getsockname()))
        except OSError:
            conn.close()
            return
        self.selector.register(conn, selectors.EVENT_READ, self._echo)

    def _http(self, listener: socket.socket) -> None:
        try:
            conn, peer = listener.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(2.0)
            try:
                request = bytearray()
                while b"\r\n\r\n" not in request and len(request) < MAX_REQUEST:
                    chunk = conn.recv(MAX_REQUEST)
                    if not chunk:
                        break
                    request += chunk
                body = report_line(peer, conn.getsockname())
                head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                conn.sendall(head + body)
            except OSError:
                pass

    def _open_transfer(self, listener: socket.socket) -> socket.socket | None:
        try:
            conn, peer = listener.accept()
        except BlockingIOError:
            return None
        try:
            conn.settimeout(2.0)
            conn.sendall(report_line(peer, conn.getsockname()))
        except OSError:
            conn.close()
            return None
        conn.setblocking(False)
        self.transfers[conn] = _Transfer()
        return conn

    def _accept_source(self, listener: socket.socket) -> None:
        conn = self._open_transfer(listener)
        if conn is not None:
            self.selector.register(conn, selectors.EVENT_READ, self._source_request)

    def _source_request(self, conn: socket.socket) -> None:
        state = self.transfers[conn]
        try:
            chunk = conn.recv(64)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        state.request += chunk
        if not chunk or len(state.request) > 64:
            self._end(conn)
        elif b"\n" in state.request:
            text = state.request.split(b"\n", 1)[0].strip()
            if not text.isdigit():
                self._end(conn)
                return
            state.remaining = min(int(text), MAX_TRANSFER)
            self.selector.modify(conn, selectors.EVENT_WRITE, self._source_send)

    def _source_send(self, conn: socket.socket) -> None:
        state = self.transfers[conn]
        try:
            state.remaining -= conn.send(_ZEROS[: min(CHUNK, state.remaining)])
        except BlockingIOError:
            return
        except OSError:
            state.remaining = 0
        if state.remaining <= 0:
            self._end(conn)

    def _accept_sink(self, listener: socket.socket) -> None:
        conn = self._open_transfer(listener)
        if conn is not None:
            self.selector.register(conn, selectors.EVENT_READ, self._sink)

    def _sink(self, conn: socket.socket) -> None:
        state = self.transfers[conn]
        try:
            chunk = conn.recv(BUFFER)
        except BlockingIOError:
            return
        except OSError:
            self._end(conn)
            return
        state.received += len(chunk)
        if state.received > MAX_TRANSFER:
            self._end(conn)
        elif not chunk:
            try:
                conn.settimeout(2.0)
                conn.sendall(f"received={state.received}\n".encode())
            except OSError:
                pass
            self._end(conn)

    def _end(self, conn: socket.socket) -> None:
        self.selector.unregister(conn)
        self.transfers.pop(conn, None)
        conn.close()

    def _echo(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(BUFFER)
            if data:
                conn.sendall(data)
                return
        except OSError:
            pass
        self.selector.unregister(conn)
        conn.close()

    def _datagram(self, sock: socket.socket) -> None:
        try:
            _, peer = sock.recvfrom(BUFFER)
            sock.sendto(report_line(peer, sock.getsockname()), peer)
        except OSError:
            pass

    def _stdin(self, stdin: object) -> None:
        # os.read, not a buffered read: one readable event must not block for more.
        if not os.read(sys.stdin.fileno(), BUFFER):
            self.running = False


class _Transfer:
    def __init__(self) -> None:
        self.request = b""
        self.remaining = 0
        self.received = 0


_ZEROS = bytes(CHUNK)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m egress_router.lab.servers")
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS)
    parser.add_argument("endpoints", nargs="+", help="ADDRESS:PORT/PROTOCOL, e.g. :80/tcp")
    args = parser.parse_args(argv)
    try:
        specs = [parse_spec(spec) for spec in args.endpoints]
        listeners = [(open_listener(*spec), spec[2]) for spec in specs]
    except (OSError, ValueError) as error:
        sys.stderr.write(f"servers: {error}\n")
        return 1
    server = Server(listeners)
    server.watch_stdin()  # the lab holds stdin open: its end is the servers' end
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    try:
        server.run(args.max_seconds)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
