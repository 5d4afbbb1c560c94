"""Neighbour announcements: gratuitous ARP (IPv4) and unsolicited neighbour advertisements (IPv6).

When a router pod is replaced, the LAN's gateway still maps the reserved address to the old
pod's MAC address until its neighbour entry expires. One announcement from the new owner makes
it switch at once. The frames are built here and sent on a packet socket (CAP_NET_RAW): no
arping process, and nothing waits for an answer, so `init` is not held up.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from typing import Protocol

from .model import IPAddress

ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
BROADCAST = b"\xff" * 6
ALL_NODES_MAC = bytes.fromhex("333300000001")
ALL_NODES = socket.inet_pton(socket.AF_INET6, "ff02::1")


class Announcer(Protocol):
    def announce(self, interface: str, mac: str, addresses: Iterable[IPAddress]) -> None:
        """Tell the LAN that `addresses` are at `mac`; raises OSError when it cannot send."""


def arp_frames(mac: bytes, address: bytes) -> list[bytes]:
    """An ARP request and an ARP reply, both naming `address` as sender and target: some
    devices update their cache on one kind only."""
    frames = []
    for op, target_mac in ((1, b"\x00" * 6), (2, mac)):
        eth = BROADCAST + mac + struct.pack("!H", ETH_P_ARP)
        arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + mac + address + target_mac + address
        frames.append(eth + arp)
    return frames


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
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class PacketSocketAnnouncer:
    def announce(self, interface: str, mac: str, addresses: Iterable[IPAddress]) -> None:
        raw_mac = bytes.fromhex(mac.replace(":", ""))
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
            sock.bind((interface, 0))
            for address in addresses:
                packed = address.packed
                if address.version == 4:
                    for frame in arp_frames(raw_mac, packed):
                        sock.send(frame)
                else:
                    sock.send(neighbour_advertisement(raw_mac, packed))


class RecordingAnnouncer:
    """In-memory announcer for tests: remembers what it was asked to announce."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, tuple[IPAddress, ...]]] = []

    def announce(self, interface: str, mac: str, addresses: Iterable[IPAddress]) -> None:
        self.sent.append((interface, mac, tuple(addresses)))
