"""Time new TCP connections, connect to first byte, in one long-lived process.

Run in the lab's client namespace: `connect_latency.py ADDRESS PORT COUNT WARMUP [BUDGET_S]`.
Each connection is a new socket, so every one is a new conntrack entry that walks the router's
NAT rules. The client resets the connection after the byte (SO_LINGER 0): neither side keeps a
TIME_WAIT socket, and a reused source port meets a closed conntrack entry, which the kernel
replaces by a fresh lookup. Prints one JSON object: nanosecond samples and failures.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time

RESET_ON_CLOSE = struct.pack("ii", 1, 0)


def one(address: str, port: int) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(2.0)
        started = time.perf_counter_ns()
        sock.connect((address, port))
        if not sock.recv(1):
            raise ConnectionError("closed before the first byte")
        elapsed = time.perf_counter_ns() - started
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
        return elapsed
    finally:
        sock.close()


def main() -> None:
    address, port = sys.argv[1], int(sys.argv[2])
    count, warmup = int(sys.argv[3]), int(sys.argv[4])
    budget = float(sys.argv[5]) if len(sys.argv) > 5 else 60.0
    deadline = time.monotonic() + budget
    samples: list[int] = []
    errors: list[str] = []
    for i in range(warmup + count):
        if time.monotonic() > deadline or len(errors) > 20:
            break
        try:
            elapsed = one(address, port)
        except OSError as error:
            errors.append(f"{type(error).__name__}: {error}")
            continue
        if i >= warmup:
            samples.append(elapsed)
    json.dump({"samples_ns": samples, "errors": errors[:5], "error_count": len(errors)}, sys.stdout)


if __name__ == "__main__":
    main()
