"""`egress-router health`: the probe as a command, one line and exit 0/1, against a real
HTTP server on localhost (the router's own handler is covered by the daemon's tests)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from egress_router.cli import main

ANSWERS = {"/healthz": (200, b"ok\n"), "/readyz": (503, b"not ready\n")}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code, body = ANSWERS.get(self.path, (404, b"not found\n"))
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def port() -> Iterator[int]:
    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()
    thread.join()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_healthy_answers_exit_0_with_the_body(port: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["health"], {"EGRESS_ROUTER_HTTP_PORT": str(port)}) == 0
    assert capsys.readouterr().out == "/healthz: ok\n"


def test_not_ready_exits_1_with_the_status(port: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["health", "--ready"], {"EGRESS_ROUTER_HTTP_PORT": str(port)}) == 1
    assert capsys.readouterr().out == "/readyz: 503: not ready\n"


def test_nothing_listening_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["health", "--timeout", "1"], {"EGRESS_ROUTER_HTTP_PORT": str(free_port())}) == 1
    out = capsys.readouterr().out
    assert out.startswith("/healthz: no answer: 127.0.0.1:") and out.count("\n") == 1


def test_a_bad_port_is_a_config_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["health"], {"EGRESS_ROUTER_HTTP_PORT": "http"}) == 2
    assert capsys.readouterr().err == (
        "egress-router: config error: EGRESS_ROUTER_HTTP_PORT: HTTP port 'http' is not a number\n"
    )


def test_port_0_means_nothing_serves(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["health"], {"EGRESS_ROUTER_HTTP_PORT": "0"}) == 1
    assert capsys.readouterr().out == "/healthz: not served (EGRESS_ROUTER_HTTP_PORT=0)\n"
