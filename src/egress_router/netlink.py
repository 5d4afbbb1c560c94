"""Netlink messages on the wire: headers, attributes, acknowledgements. Pure but for `Channel`.

Both kernel adapters speak netlink: `nft.elements` to nf_tables (map elements) and
`network.rtnl` to the routing subsystem (link, addresses, routes). This is what they share: the
`nlmsghdr` and `nlattr` layouts, the kernel's answers with its extended error messages, and a
socket that sends a request and collects the answers to it.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator

NETLINK_ROUTE = 0
NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # acks carry the request's header only, not all of it
NETLINK_EXT_ACK = 11  # errors carry the kernel's own words

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_ACK_TLVS = 0x200  # in an ack: extended attributes follow
NLM_F_CREATE = 0x400
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
NLMSGERR_ATTR_MSG = 1

HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
ATTR = struct.Struct("=HH")  # nlattr: length, type
ERROR = struct.Struct("=i")  # nlmsgerr.error, followed by the request's nlmsghdr

ANSWER_TIMEOUT = 5.0  # seconds; the kernel answers while `send` runs, this is a safety net


def attr(kind: int, payload: bytes) -> bytes:
    length = ATTR.size + len(payload)
    return ATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def name_attr(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def message(kind: int, flags: int, sequence: int, body: bytes) -> bytes:
    return HEADER.pack(HEADER.size + len(body), kind, flags, sequence, 0) + body


def messages(data: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """(type, flags, sequence, start of payload, end) of each message in a datagram."""
    offset = 0
    while offset + HEADER.size <= len(data):
        length, kind, flags, sequence, _ = HEADER.unpack_from(data, offset)
        if length < HEADER.size or offset + length > len(data):
            return
        yield kind, flags, sequence, offset + HEADER.size, offset + length
        offset += (length + 3) & ~3


def attributes(data: bytes, start: int, end: int) -> dict[int, bytes]:
    """The attributes between `start` and `end`, by type (nested ones left as bytes)."""
    found: dict[int, bytes] = {}
    while start + ATTR.size <= end:
        length, kind = ATTR.unpack_from(data, start)
        if length < ATTR.size:
            break
        found[kind & NLA_TYPE_MASK] = data[start + ATTR.size : start + length]
        start += (length + 3) & ~3
    return found


def error_of(data: bytes, start: int, end: int, flags: int) -> tuple[int, str]:
    """An NLMSG_ERROR's code (0: an acknowledgement) and the kernel's message, if any."""
    (code,) = ERROR.unpack_from(data, start)
    if not code or not flags & NLM_F_ACK_TLVS:
        return -code, ""
    # nlmsgerr: the code, then the request's header (capped: no payload), then attributes.
    found = attributes(data, start + ERROR.size + HEADER.size, end)
    text = found.get(NLMSGERR_ATTR_MSG, b"").rstrip(b"\0").decode(errors="replace")
    return -code, text


def describe(code: int, message: str) -> str:
    """`strerror (kernel's words)`: a refusal as `ip` and `nft` put it."""
    text = os.strerror(code) if code else "unknown error"
    return f"{text} ({message})" if message else text


def explain(code: int, what: str, message: str) -> str:
    """`what: strerror (kernel's words)`, with the cause a user can act on for EPERM."""
    text = describe(code, message)
    if code == errno.EPERM:
        text += " (the router needs the NET_ADMIN capability)"
    return f"{what}: {text}"


def open_socket(protocol: int, timeout: float = ANSWER_TIMEOUT) -> socket.socket:
    """A netlink socket whose acks are short and whose errors carry the kernel's words.
    Raises OSError if the kernel has no such protocol."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
    sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
    sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
    sock.settimeout(timeout)
    return sock


class NetlinkError(OSError):
    """The kernel refused a request: `errno` is its code, `detail` its own words, if any."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, os.strerror(code))
        self.detail = detail


class Channel:
    """A netlink socket for requests that are answered at once: a change (acknowledged) or a
    dump (answered by a series of messages). Sequence numbers never repeat on it, so an
    answer that comes too late for one request is never read as another's."""

    def __init__(self, protocol: int) -> None:
        self.protocol = protocol
        self._socket: socket.socket | None = None
        self._sequence = 0

    def open(self) -> socket.socket:
        """Raises OSError if the socket cannot be made (no such protocol in this kernel)."""
        if self._socket is None:
            self._socket = open_socket(self.protocol)
        return self._socket

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def next_sequence(self, count: int = 1) -> int:
        """The first of `count` fresh sequence numbers."""
        if self._sequence > 0x7FFF0000:
            self.close()
            self._sequence = 0
        first = self._sequence + 1
        self._sequence += count
        return first

    def change(self, kind: int, flags: int, body: bytes) -> None:
        """Send one request that asks for an ack; raise `NetlinkError` if it is refused."""
        sock = self.open()
        sequence = self.next_sequence()
        sock.send(message(kind, flags | NLM_F_REQUEST | NLM_F_ACK, sequence, body))
        for data in self._answers():
            for answer, answer_flags, number, start, end in messages(data):
                if number == sequence and answer == NLMSG_ERROR:
                    code, text = error_of(data, start, end, answer_flags)
                    if code:
                        raise NetlinkError(code, text)
                    return

    def dump(self, kind: int, body: bytes) -> Iterator[tuple[int, bytes, int, int]]:
        """The messages answering a dump request: (type, datagram, start, end) each."""
        sock = self.open()
        sequence = self.next_sequence()
        sock.send(message(kind, NLM_F_REQUEST | NLM_F_DUMP, sequence, body))
        for data in self._answers():
            for answer, answer_flags, number, start, end in messages(data):
                if number != sequence:
                    continue
                if answer == NLMSG_DONE:
                    return
                if answer == NLMSG_ERROR:
                    code, text = error_of(data, start, end, answer_flags)
                    if code:
                        raise NetlinkError(code, text)
                    return
                yield answer, data, start, end

    def _answers(self) -> Iterator[bytes]:
        assert self._socket is not None
        while True:
            try:
                yield self._socket.recv(1 << 20)
            except TimeoutError:
                self.close()  # answers may still come: none must be read as the next request's
                raise NetlinkError(errno.ETIMEDOUT, "the kernel did not answer") from None
