"""Neighbour announcements: gratuitous ARP (IPv4) and unsolicited neighbour advertisements (IPv6).

When a router pod is replaced, the LAN's gateway still maps the reserved address to the old
pod's MAC address until its neighbour entry expires. One announcement from the new owner makes
it switch at once. The frames are built here and sent on a packet socket (CAP_NET_RAW): no
arping process, and nothing waits for an answer, so `init` is not held up.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address
from typing import NamedTuple, Protocol

from .model import IPAddress

ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
BROADCAST = b"\xff" * 6
ALL_NODES_MAC = bytes.fromhex("333300000001")
ALL_NODES = socket.inet_pton(socket.AF_INET6, "ff02::1")


class NeighbourReport(NamedTuple):
    """What the LAN answered to one ARP exchange."""

    gateway_mac: str | None  # None: the gateway did not answer in time
    conflicts: tuple[str, ...] = ()  # MAC addresses of other hosts that claim the source address


class Announcer(Protocol):
    def exchange(
        self,
        interface: str,
        mac: str,
        addresses: Iterable[IPAddress],
        probe: tuple[IPv4Address, IPv4Address] | None = None,
        timeout: float = 0.5,
    ) -> NeighbourReport | None:
        """With `probe` (source, gateway): ask who holds the source (an RFC 5227 probe) and
        where the gateway is. Then tell the LAN that `addresses` are at `mac`. Raises OSError
        when it cannot send; returns the probe's report (None without a probe)."""


def _arp(op: int, mac: bytes, sender: bytes, target_mac: bytes, target: bytes, dst: bytes = BROADCAST) -> bytes:
    eth = dst + mac + struct.pack("!H", ETH_P_ARP)
    return eth + struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + mac + sender + target_mac + target


def parse_arp(frame: bytes) -> tuple[int, bytes, bytes] | None:
    """(operation, sender MAC, sender IPv4) of an Ethernet ARP frame, or None."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x06" or frame[14:20] != b"\x00\x01\x08\x00\x06\x04":
        return None
    return struct.unpack("!H", frame[20:22])[0], frame[22:28], frame[28:32]


def _mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def arp_frames(mac: bytes, address: bytes) -> list[bytes]:
    """An ARP request and an ARP reply, both naming `address` as sender and target: some
    devices update their cache on one kind only."""
    return [_arp(1, mac, address, b"\x00" * 6, address), _arp(2, mac, address, mac, address)]


def neighbour_advertisement(mac: bytes, address: bytes) -> bytes:
    """An unsolicited neighbour advertisement (RFC 4861 7.2.6) to all nodes, override flag set."""
    # type 136, code 0, checksum, flags (override), target, option: target link-layer address
    icmp = struct.pack("!BBHI", 136, 0, 0, 0x20000000) + address + b"\x02\x01" + mac
    pseudo = address + ALL_NODES + struct.pack("!I3xB", len(icmp), 58)
    checksum = _checksum(pseudo + icmp)
    icmp = icmp[:2] + struct.pack("!H", checksum) + icmp[4:]
    ip6 = struct.pack("!IHBB", 0x60000000, len(icmp), 58, 255) + address + ALL_NODES
    return ALL_NODES_MAC + mac + struct.pack("!H", ETH_P_IPV6) + ip6 + icmp


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class PacketSocketAnnouncer:
    """Probe and announce on one packet socket, in a child process.

    Closing a packet socket makes the kernel wait out an RCU grace period (10-15 ms on these
    machines), and so does a process exit that closes one: a third of a pod start. The child
    sends the frames, hands the probe's answer back through a pipe and closes it, and only then
    exits; the router goes on at once and never waits for that last close.
    """

    def exchange(
        self,
        interface: str,
        mac: str,
        addresses: Iterable[IPAddress],
        probe: tuple[IPv4Address, IPv4Address] | None = None,
        timeout: float = 0.5,
    ) -> NeighbourReport | None:
        frames = list(addresses)
        read_end, write_end = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(read_end)
            os.close(write_end)
            try:
                return _exchange(interface, mac, frames, probe, timeout)
            finally:
                while _keep:
                    _keep.pop().close()
        if pid == 0:  # the child: never returns
            os.close(read_end)
            # Whoever waits for the router's output must not wait for this child's exit.
            os.closerange(0, 3)
            _child(write_end, lambda: _exchange(interface, mac, frames, probe, timeout))
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            answer = pipe.read()
        # Reaped on the side, so that a long-running router leaves no zombie behind; a daemon
        # thread, so that `init` exits without waiting for it.
        threading.Thread(target=_reap, args=(pid,), daemon=True).start()
        return _decode(answer)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _child(write_end: int, work: Callable[[], NeighbourReport | None]) -> None:
    code = 0
    try:
        report = work()
        message = b"-" if report is None else _encode(report)
    except OSError as error:
        message = b"!" + (error.strerror or str(error)).encode()
        code = 1
    except BaseException as error:  # noqa: BLE001 -- never let the child run on into the router's own code
        message = b"!" + repr(error).encode()
        code = 1
    try:
        os.write(write_end, message)
        os.close(write_end)
    finally:
        os._exit(code)


def _encode(report: NeighbourReport) -> bytes:
    return f"{report.gateway_mac or ''} {','.join(report.conflicts)}".encode()


def _decode(answer: bytes) -> NeighbourReport | None:
    if answer.startswith(b"!"):
        raise OSError(answer[1:].decode(errors="replace"))
    if answer == b"-":
        return None
    if not answer:
        raise OSError("the announcing process ended without an answer")
    gateway, _, conflicts = answer.decode().partition(" ")
    return NeighbourReport(gateway or None, tuple(c for c in conflicts.split(",") if c))


def _exchange(
    interface: str,
    mac: str,
    addresses: list[IPAddress],
    probe: tuple[IPv4Address, IPv4Address] | None,
    timeout: float,
) -> NeighbourReport | None:
    """Probe and announce; the socket is left open on purpose: the caller's process exit
    closes it (see `PacketSocketAnnouncer`)."""
    raw_mac = bytes.fromhex(mac.replace(":", ""))
    report = None
    # Protocol 0 at creation and ARP at bind: the receive hook is registered once.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.bind((interface, ETH_P_ARP))
    if probe is not None:
        report = _probe(sock, raw_mac, probe[0].packed, probe[1].packed, timeout)
    for address in addresses:
        if address.version == 4:
            for frame in arp_frames(raw_mac, address.packed):
                sock.send(frame)
        else:
            sock.send(neighbour_advertisement(raw_mac, address.packed))
    _keep.append(sock)
    return report


# Sockets of `_exchange`, closed by the exit of the (child) process that made them.
_keep: list[socket.socket] = []


def _probe(sock: socket.socket, mac: bytes, source: bytes, gateway: bytes, timeout: float) -> NeighbourReport:
    for frame in probe_frames(mac, source, gateway):
        sock.send(frame)
    # Stop as soon as the gateway answers: a host that holds our address answers the probe
    # about as fast, and a healthy start must not wait out the timeout.
    frames = _receive_until(
        sock,
        time.monotonic() + timeout,
        lambda got: collect_replies(got[-1:], mac, source, gateway)[0] is not None,
    )
    gateway_mac, conflicts = collect_replies(frames, mac, source, gateway)
    return NeighbourReport(gateway_mac, tuple(sorted(conflicts)))


def probe_frames(mac: bytes, source: bytes, gateway: bytes) -> list[bytes]:
    """An ARP probe for our source (sender 0.0.0.0, so no cache learns from it) and a request
    for the gateway."""
    zero_mac, zero_ip = b"\x00" * 6, b"\x00" * 4
    return [_arp(1, mac, zero_ip, zero_mac, source), _arp(1, mac, source, zero_mac, gateway)]


def collect_replies(
    frames: Iterable[bytes], mac: bytes, source: bytes, gateway: bytes
) -> tuple[str | None, set[str]]:
    gateway_mac: str | None = None
    conflicts: set[str] = set()
    for frame in frames:
        parsed = parse_arp(frame)
        if parsed is None:
            continue
        op, sender_mac, sender_ip = parsed
        if sender_ip == source and sender_mac != mac:
            conflicts.add(_mac_text(sender_mac))
        elif sender_ip == gateway and op == 2:
            gateway_mac = _mac_text(sender_mac)
    return gateway_mac, conflicts


def _receive_until(sock: socket.socket, deadline: float, done: Callable[[list[bytes]], bool]) -> list[bytes]:
    frames: list[bytes] = []
    while not done(frames):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            break
        frames.append(sock.recv(128))
    return frames


class RecordingAnnouncer:
    """In-memory announcer for tests: remembers what it was asked, answers probes with
    `report`."""

    def __init__(self, report: NeighbourReport | None = None) -> None:
        self.sent: list[tuple[str, str, tuple[IPAddress, ...]]] = []
        self.report = report or NeighbourReport(gateway_mac="02:00:00:00:00:fe")
        self.probes: list[tuple[str, IPv4Address, IPv4Address]] = []

    def exchange(
        self,
        interface: str,
        mac: str,
        addresses: Iterable[IPAddress],
        probe: tuple[IPv4Address, IPv4Address] | None = None,
        timeout: float = 0.5,
    ) -> NeighbourReport | None:
        self.sent.append((interface, mac, tuple(addresses)))
        if probe is None:
            return None
        self.probes.append((interface, *probe))
        return self.report
