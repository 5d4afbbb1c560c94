"""A TCP server that writes one byte on accept and closes: the far end of a latency probe.

Run in the lab's ext namespace: `one_byte_server.py ADDRESS PORT [SECONDS] [spin|block]`. It
prints "ready" once it listens, and exits by itself after SECONDS (default 900) so that nothing
outlives a run even if the parent dies without its teardown.

`spin` (the default) polls a non-blocking socket instead of sleeping in accept(): on a small VM,
waking a sleeping process on the other CPU costs tens of microseconds and lands on a random
share of the connections, which buries the NAT lookup being measured under scheduler noise.
"""

from __future__ import annotations

import socket
import sys
import time


def main() -> None:
    address, port = sys.argv[1], int(sys.argv[2])
    lifetime = float(sys.argv[3]) if len(sys.argv) > 3 else 900.0
    spin = (sys.argv[4] if len(sys.argv) > 4 else "spin") == "spin"
    deadline = time.monotonic() + lifetime
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((address, port))
        server.listen(1024)
        server.settimeout(0.0 if spin else 1.0)
        print("ready", flush=True)
        polls = 0
        while True:
            polls += 1
            if polls % 4096 == 0 and time.monotonic() > deadline:
                break
            try:
                conn, _ = server.accept()
            except (BlockingIOError, TimeoutError):
                if not spin and time.monotonic() > deadline:
                    break
                continue
            conn.setblocking(True)
            with conn:
                try:
                    conn.sendall(b"x")
                except OSError:
                    pass


if __name__ == "__main__":
    main()
