"""Health and metrics over HTTP, in a thread of the daemon (imported only when the port is set).

`/healthz`: the daemon's loop is turning (kubelet restarts a pod whose loop is stuck).
`/readyz`: the current configuration is applied and the last check found the kernel holding it.
`/metrics`: Prometheus text, built at scrape time by `metrics.Collector`.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .log import Log
from .metrics import Collector, Stats
from .nft.listing import TableReader

# The loop ticks every half second and a check takes milliseconds; a minute without a tick is
# a stuck process, not a slow one.
ALIVE_WITHIN = 60.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        # One socket for both families, so probes reach the pod on whichever it has.
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class _IPv4Server(ThreadingHTTPServer):
    daemon_threads = True


class HealthServer:
    def __init__(self, port: int, stats: Stats, reader: TableReader, log: Log) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(Collector(stats, reader))
        handler = _handler(stats, registry, log)
        try:
            self.server: ThreadingHTTPServer = _Server(("::", port), handler)
        except OSError:  # IPv6 disabled in this pod
            self.server = _IPv4Server(("0.0.0.0", port), handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(stats: Stats, registry: CollectorRegistry, log: Log) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                ok = stats.alive(ALIVE_WITHIN)
                self._send(200 if ok else 503, b"ok\n" if ok else b"stuck\n")
            elif path == "/readyz":
                ok = stats.ready
                self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
            elif path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            else:
                self._send(404, b"not found\n")

        def _send(self, code: int, body: bytes, kind: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # Probes every few seconds would drown the log; errors only, at debug level.
            log.debug("http", client=self.client_address[0], request=format % args)

    return Handler
