"""Time new TCP connections, connect to first byte, in one long-lived process.

Run in the lab's client namespace:
`connect_latency.py ADDRESS PORT COUNT WARMUP [BUDGET_S] [spin|block]`.
Each connection is a new socket, so every one is a new conntrack entry that walks the router's
NAT rules. The client resets the connection after the byte (SO_LINGER 0): neither side keeps a
TIME_WAIT socket, and a reused source port meets a closed conntrack entry, which the kernel
replaces by a fresh lookup. With `spin` (the default) the client polls a non-blocking socket
rather than sleeping, for the reason given in one_byte_server.py. Prints one JSON object:
nanosecond samples and failures.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import sys
import time

RESET_ON_CLOSE = struct.pack("ii", 1, 0)
TIMEOUT_NS = 2_000_000_000


def one(address: str, port: int, spin: bool) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if spin:
            sock.setblocking(False)
            started = time.perf_counter_ns()
            code = sock.connect_ex((address, port))
            if code not in (0, errno.EINPROGRESS):
                raise OSError(code, os.strerror(code))
            data = spin_recv(sock, started + TIMEOUT_NS)
        else:
            sock.settimeout(TIMEOUT_NS / 1e9)
            started = time.perf_counter_ns()
            sock.connect((address, port))
            data = sock.recv(1)
        elapsed = time.perf_counter_ns() - started
        if not data:
            raise ConnectionError("closed before the first byte")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
        return elapsed
    finally:
        sock.close()


def spin_recv(sock: socket.socket, deadline_ns: int) -> bytes:
    while True:
        try:
            return sock.recv(1)
        except BlockingIOError:
            pass
        except OSError as error:
            # Still connecting: some kernels say "not connected" rather than "try again".
            if error.errno != errno.ENOTCONN:
                raise
        if time.perf_counter_ns() > deadline_ns:
            raise TimeoutError("no first byte within 2 s")


def main() -> None:
    address, port = sys.argv[1], int(sys.argv[2])
    count, warmup = int(sys.argv[3]), int(sys.argv[4])
    budget = float(sys.argv[5]) if len(sys.argv) > 5 else 60.0
    spin = (sys.argv[6] if len(sys.argv) > 6 else "spin") == "spin"
    deadline = time.monotonic() + budget
    samples: list[int] = []
    errors: list[str] = []
    for i in range(warmup + count):
        if time.monotonic() > deadline or len(errors) > 20:
            break
        try:
            elapsed = one(address, port, spin)
        except OSError as error:
            errors.append(f"{type(error).__name__}: {error}")
            continue
        if i >= warmup:
            samples.append(elapsed)
    json.dump({"samples_ns": samples, "errors": errors[:5], "error_count": len(errors)}, sys.stdout)


if __name__ == "__main__":
    main()
