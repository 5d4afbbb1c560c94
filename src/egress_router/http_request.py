"""The HTTP/1.1 that `http.py` speaks, without sockets: a request head in, a response out.

Minimal and strict, because only probes and scrapers have a reason to talk to the router: a
request line of `GET <path> HTTP/1.0|1.1`, header lines of `name: value`, nothing else. Every
response closes its connection, so there is no keep-alive, pipelining or body to track.
"""

from __future__ import annotations

from typing import NamedTuple

MAX_REQUEST = 8192  # a request head; kubelet's and Prometheus' are a few hundred bytes
VERSIONS = (b"HTTP/1.0", b"HTTP/1.1")
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
# A token (RFC 9110): what a method or a header name may be made of.
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class RequestError(Exception):
    """The request cannot be served; `code` is the status that says why."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class Request(NamedTuple):
    method: str
    target: str
    version: str

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def line(self) -> str:
        return f"{self.method} {self.target} {self.version}"


def request_end(data: bytes | bytearray) -> int | None:
    """Where the head of the request in `data` ends (past its blank line), or None while it is
    incomplete. Bare LF line ends are taken as well as CRLF."""
    ends = [i + len(mark) for mark in (b"\r\n\r\n", b"\n\n") if (i := data.find(mark)) >= 0]
    return min(ends) if ends else None


def parse_request(head: bytes) -> Request:
    """A complete request head -> the `Request`; raises `RequestError` with the status to
    answer."""
    if len(head) > MAX_REQUEST:
        raise RequestError(431, "request head over 8192 bytes")
    if request_end(head) is None:
        raise RequestError(400, "incomplete request")
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0] or not _is_token(parts[0]):
        raise RequestError(400, "malformed request line")
    method, target, version = parts
    if not version.startswith(b"HTTP/"):
        raise RequestError(400, "malformed request line")
    if version not in VERSIONS:
        raise RequestError(505, "HTTP/1.0 or HTTP/1.1 only")
    if not target.startswith(b"/") or not target.isascii() or any(c <= 32 or c == 127 for c in target):
        raise RequestError(400, "malformed request target")
    for line in lines[1:]:
        if not line:
            break
        name, colon, _ = line.partition(b":")
        if not colon or not name or not _is_token(name):
            raise RequestError(400, "malformed header line")
    if method != b"GET":
        raise RequestError(501, f"method {method.decode()} is not served (GET only)")
    return Request(method.decode(), target.decode(), version.decode())


def _is_token(text: bytes) -> bool:
    return all(c in _TOKEN for c in text)


def response_head(code: int, length: int, content_type: str) -> bytes:
    """The status line and headers of a response whose body is `length` bytes."""
    # HTTP/1.0, as http.server answered before: nothing here needs 1.1 (no keep-alive, no
    # chunks), and a 1.0 response is what every client of a closing server expects.
    return (
        f"HTTP/1.0 {code} {REASONS.get(code, 'Unknown')}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
