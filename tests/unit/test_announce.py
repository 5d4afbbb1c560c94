"""Neighbour announcements and probes, frame by frame, and the answer the prober hands back."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from egress_router.neighbours import frames as F
from egress_router.neighbours.packet import PacketSocketAnnouncer

MAC = bytes.fromhex("020000000001")
OTHER = bytes.fromhex("020000000002")
GW_MAC = bytes.fromhex("0200000000fe")
SOURCE = ipaddress.IPv4Address("192.0.2.99").packed
GATEWAY = ipaddress.IPv4Address("192.0.2.1").packed
SOURCE6 = ipaddress.IPv6Address("2001:db8:1::99").packed
GATEWAY6 = ipaddress.IPv6Address("fe80::1").packed


def valid_icmpv6(frame: bytes) -> bool:
    ip6, icmp = frame[14:54], frame[54:]
    pseudo = ip6[8:40] + struct.pack("!I3xB", len(icmp), 58)
    return ip6[6] == 58 and ip6[7] == 255 and F.checksum(pseudo + icmp) == 0


def test_gratuitous_arp_names_the_source_as_sender_and_target() -> None:
    request, reply = F.arp_announcement(MAC, SOURCE)
    for frame, is_reply in ((request, False), (reply, True)):
        assert frame[:6] == b"\xff" * 6 and frame[6:12] == MAC
        assert F.claim(frame) == (is_reply, MAC, SOURCE)
        assert frame[38:42] == SOURCE  # target protocol address


def test_arp_probe_teaches_nobody_our_address() -> None:
    probe = F.arp_probe(MAC, SOURCE)
    assert F.claim(probe) == (False, MAC, b"\x00" * 4) and probe[38:42] == SOURCE


def test_neighbour_advertisement_is_a_valid_icmpv6_packet() -> None:
    frame = F.neighbour_advertisement(MAC, SOURCE6)
    assert frame[:6] == bytes.fromhex("333300000001") and frame[12:14] == b"\x86\xdd"
    assert valid_icmpv6(frame)
    icmp = frame[54:]
    assert icmp[0] == 136 and struct.unpack("!I", icmp[4:8])[0] & 0x20000000  # override flag
    assert icmp[8:24] == SOURCE6 and icmp[24:26] == b"\x02\x01" and icmp[26:32] == MAC
    assert F.claim(frame) == (True, MAC, SOURCE6)


def test_neighbour_probe_goes_to_the_solicited_node_group_from_nowhere() -> None:
    frame = F.neighbour_probe(MAC, GATEWAY6)
    assert valid_icmpv6(frame)
    assert frame[:6] == bytes.fromhex("3333ff000001")  # 33:33 + ff + the target's last 3 bytes
    assert frame[22:38] == b"\x00" * 16  # source ::, as duplicate address detection sends it
    assert frame[38:54] == bytes.fromhex("ff0200000000000000000001ff000001")
    assert frame[54] == 135 and frame[62:78] == GATEWAY6 and len(frame) == 78  # no option


def test_answers_find_the_gateways_and_any_other_holder_of_a_source() -> None:
    received = [
        F.arp(2, GW_MAC, GATEWAY, MAC, SOURCE, dst=MAC),  # the gateway answers
        F.arp(2, OTHER, SOURCE, MAC, b"\x00" * 4, dst=MAC),  # someone else holds our address
        F.arp(2, MAC, SOURCE, MAC, SOURCE),  # our own announcement: not a conflict
        F.neighbour_advertisement(GW_MAC, GATEWAY6),
        F.neighbour_advertisement(OTHER, SOURCE6),
        b"\x00" * 60,  # anything else
    ]
    answered, conflicts = F.read_answers(received, MAC, [SOURCE, SOURCE6], [GATEWAY, GATEWAY6])
    assert answered == {GATEWAY, GATEWAY6}
    assert conflicts == {(SOURCE, OTHER), (SOURCE6, OTHER)}


def test_a_gateway_asking_is_not_a_gateway_answering() -> None:
    asking = F.arp(1, GW_MAC, GATEWAY, F.NO_MAC, SOURCE)
    assert F.read_answers([asking], MAC, [SOURCE], [GATEWAY]) == (set(), set())


def test_the_filter_program_lands_on_accept_and_drop() -> None:
    # Every jump must land inside the program, on one of its two returns at the end.
    program = F.NEIGHBOUR_FILTER
    for i, (op, jt, jf, _) in enumerate(program):
        if op == 0x15:
            for target in (i + 1 + jt, i + 1 + jf):
                assert target < len(program)
    assert [op for op, *_ in program[-2:]] == [0x06, 0x06]


def test_a_failing_exchange_is_an_oserror_in_the_router() -> None:
    with pytest.raises(OSError):  # no such interface (and, without root, no packet socket)
        PacketSocketAnnouncer().exchange("no-such-if0", "02:00:00:00:00:01", [])
