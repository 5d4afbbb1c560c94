"""A client that abuses the router's health port: `count` idle TCP connections, each opened
again as soon as the server drops it, for `seconds` (bounded, like every lab traffic loop).

    python -m egress_router.lab.idle_clients HOST PORT COUNT SECONDS

Prints `ready` once all are opened, then at the end one JSON line: how many connections it
opened and how many the server dropped.
"""

from __future__ import annotations

import json
import resource
import selectors
import socket
import sys
import time


def hold(host: str, port: int, count: int, seconds: float) -> dict[str, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count + 64
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(hard, wanted), hard))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    selector = selectors.DefaultSelector()
    counts = {"opened": 0, "dropped": 0}

    def open_one() -> None:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex((host, port))
        selector.register(sock, selectors.EVENT_READ)
        counts["opened"] += 1

    for _ in range(count):
        open_one()
    print("ready", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for key, _ in selector.select(0.1):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(1)
            except OSError:
                data = b""
            if not data:  # dropped by the server: another one, idle again
                selector.unregister(sock)
                sock.close()
                counts["dropped"] += 1
                open_one()
    return counts


def main(argv: list[str]) -> int:
    host, port, count, seconds = argv[0], int(argv[1]), int(argv[2]), float(argv[3])
    print(json.dumps(hold(host, port, count, seconds)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
