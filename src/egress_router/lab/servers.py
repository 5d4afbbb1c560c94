"""Reporting servers for the lab's outside world: one process, many endpoints, one selector.

    python -m egress_router.lab.servers [--max-seconds N] 203.0.113.25:80/tcp [2001:db8:2::25]:53/udp ...

Each TCP connection gets one line, `peer=<address>:<port> local=<address>:<port>`, and then
everything it sends is echoed back (so a long-lived connection can keep exchanging data). Each
UDP datagram gets the same line as its answer. The process writes `ready` on stdout once every
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

from .probe import format_endpoint, parse_endpoint, report_line

DEFAULT_MAX_SECONDS = 3600.0
BUFFER = 65536


def parse_spec(text: str) -> tuple[str, int, str]:
    """`203.0.113.25:80/tcp` -> ("203.0.113.25", 80, "tcp")."""
    endpoint, _, protocol = text.rpartition("/")
    if protocol not in ("tcp", "udp"):
        raise ValueError(f"{text!r}: protocol must be tcp or udp")
    address, port = parse_endpoint(endpoint)
    return address, port, protocol


def format_spec(address: str, port: int, protocol: str) -> str:
    return f"{format_endpoint(address, port)}/{protocol}"


def open_listener(address: str, port: int, protocol: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    if protocol == "tcp":
        sock.listen(128)
    sock.setblocking(False)
    return sock


class Server:
    def __init__(self, listeners: list[socket.socket]) -> None:
        self.selector = selectors.DefaultSelector()
        for sock in listeners:
            handler = self._accept if sock.type == socket.SOCK_STREAM else self._datagram
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m egress_router.lab.servers")
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS)
    parser.add_argument("endpoints", nargs="+", help="ADDRESS:PORT/tcp or ADDRESS:PORT/udp")
    args = parser.parse_args(argv)
    try:
        listeners = [open_listener(*parse_spec(spec)) for spec in args.endpoints]
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
