"""Neighbour-discovery frames, built and read byte by byte. Pure: no socket here.

IPv4 uses ARP; IPv6 uses ICMPv6 neighbour discovery (RFC 4861). The router sends four kinds:
an announcement of its address (gratuitous ARP, unsolicited neighbour advertisement), a probe
asking whether anyone else holds it (RFC 5227 ARP probe, a duplicate-address-detection
solicitation), and a question for the gateway. Probes carry no source address (0.0.0.0, ::),
so that no neighbour cache learns anything from them.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable

ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
BROADCAST = b"\xff" * 6
ALL_NODES = socket.inet_pton(socket.AF_INET6, "ff02::1")
ALL_NODES_MAC = bytes.fromhex("333300000001")
UNSPECIFIED6 = b"\x00" * 16
NO_MAC = b"\x00" * 6
ICMPV6 = 58
SOLICITATION, ADVERTISEMENT = 135, 136
OVERRIDE = 0x20000000

# A classic BPF program for the probe's socket: only ARP frames and ICMPv6 neighbour
# advertisements reach Python, however much traffic the interface carries meanwhile.
# (opcode, jump if true, jump if false, constant)
NEIGHBOUR_FILTER = (
    (0x28, 0, 0, 12),  # 0 ldh [12]: the ethertype
    (0x15, 5, 0, ETH_P_ARP),  # 1 ARP: accept (7)
    (0x15, 0, 5, ETH_P_IPV6),  # 2 not IPv6: drop (8)
    (0x30, 0, 0, 20),  # 3 ldb [20]: the IPv6 next header
    (0x15, 0, 3, ICMPV6),  # 4 not ICMPv6: drop (8)
    (0x30, 0, 0, 54),  # 5 ldb [54]: the ICMPv6 type
    (0x15, 0, 1, ADVERTISEMENT),  # 6 an advertisement: accept (7), else drop (8)
    (0x06, 0, 0, 0xFFFF),  # 7 accept
    (0x06, 0, 0, 0),  # 8 drop
)


def arp(op: int, mac: bytes, sender: bytes, target_mac: bytes, target: bytes, dst: bytes = BROADCAST) -> bytes:
    eth = dst + mac + struct.pack("!H", ETH_P_ARP)
    return eth + struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + mac + sender + target_mac + target


def arp_announcement(mac: bytes, address: bytes) -> list[bytes]:
    """An ARP request and an ARP reply, both naming `address` as sender and target: some
    devices update their cache on one kind only."""
    return [arp(1, mac, address, NO_MAC, address), arp(2, mac, address, mac, address)]


def arp_probe(mac: bytes, target: bytes) -> bytes:
    """Who has `target`? Asked with sender 0.0.0.0 (RFC 5227): its holder answers, nobody learns."""
    return arp(1, mac, b"\x00" * 4, NO_MAC, target)


def neighbour_advertisement(mac: bytes, address: bytes) -> bytes:
    """An unsolicited neighbour advertisement (RFC 4861 7.2.6) to all nodes, override flag set,
    with the target link-layer address option."""
    icmp = struct.pack("!BBHI", ADVERTISEMENT, 0, 0, OVERRIDE) + address + b"\x02\x01" + mac
    return _ipv6(mac, ALL_NODES_MAC, address, ALL_NODES, icmp)


def neighbour_probe(mac: bytes, target: bytes) -> bytes:
    """A neighbour solicitation for `target` from the unspecified address (as duplicate address
    detection sends it): its holder answers to all nodes, nobody learns."""
    group = b"\xff\x02" + b"\x00" * 9 + b"\x01\xff" + target[13:]  # solicited-node multicast
    icmp = struct.pack("!BBHI", SOLICITATION, 0, 0, 0) + target
    return _ipv6(mac, b"\x33\x33" + group[12:], UNSPECIFIED6, group, icmp)


def _ipv6(mac: bytes, dst_mac: bytes, source: bytes, destination: bytes, icmp: bytes) -> bytes:
    pseudo = source + destination + struct.pack("!I3xB", len(icmp), ICMPV6)
    icmp = icmp[:2] + struct.pack("!H", checksum(pseudo + icmp)) + icmp[4:]
    # Hop limit 255: receivers drop neighbour discovery that may have crossed a router.
    header = struct.pack("!IHBB", 0x60000000, len(icmp), ICMPV6, 255) + source + destination
    return dst_mac + mac + struct.pack("!H", ETH_P_IPV6) + header + icmp


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def claim(frame: bytes) -> tuple[bool, bytes, bytes] | None:
    """What a frame says about who holds an address: (an answer?, the MAC, the address), for
    ARP (the sender's address; replies are answers) and neighbour advertisements (the target;
    all are answers). None for anything else."""
    kind = frame[12:14]
    if kind == b"\x08\x06" and len(frame) >= 42 and frame[14:20] == b"\x00\x01\x08\x00\x06\x04":
        return frame[20:22] == b"\x00\x02", frame[22:28], frame[28:32]
    if kind == b"\x86\xdd" and len(frame) >= 78 and frame[20] == ICMPV6 and frame[54] == ADVERTISEMENT:
        # The target link-layer address option, when present, names the holder; else the sender.
        option = frame[78:86]
        holder = option[2:8] if len(option) == 8 and option[0] == 2 else frame[6:12]
        return True, holder, frame[62:78]
    return None


def read_answers(
    frames: Iterable[bytes], mac: bytes, sources: Iterable[bytes], gateways: Iterable[bytes]
) -> tuple[set[bytes], set[tuple[bytes, bytes]]]:
    """The gateways that answered, and (address, MAC) of every other host that claims one of
    our source addresses."""
    ours, wanted = set(sources), set(gateways)
    answered: set[bytes] = set()
    conflicts: set[tuple[bytes, bytes]] = set()
    for frame in frames:
        said = claim(frame)
        if said is None or said[1] == mac:
            continue
        is_answer, holder, address = said
        if address in ours:
            conflicts.add((address, holder))
        elif address in wanted and is_answer:
            answered.add(address)
    return answered, conflicts


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)
