"""A TCP server that writes one byte on accept and closes: the far end of a latency probe.

Run in the lab's ext namespace: `one_byte_server.py ADDRESS PORT [SECONDS]`. It prints "ready"
once it listens, and exits by itself after SECONDS (default 900) so that nothing outlives a run
even if the parent dies without its teardown.
"""

from __future__ import annotations

import socket
import sys
import time


def main() -> None:
    address, port = sys.argv[1], int(sys.argv[2])
    lifetime = float(sys.argv[3]) if len(sys.argv) > 3 else 900.0
    deadline = time.monotonic() + lifetime
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((address, port))
        server.listen(1024)
        server.settimeout(1.0)
        print("ready", flush=True)
        while time.monotonic() < deadline:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                try:
                    conn.sendall(b"x")
                except OSError:
                    pass


if __name__ == "__main__":
    main()
