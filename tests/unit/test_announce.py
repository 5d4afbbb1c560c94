"""Neighbour announcements and probes, frame by frame."""

from __future__ import annotations

import ipaddress
import struct

from egress_router.announce import (
    _arp,
    _checksum,
    arp_frames,
    collect_replies,
    neighbour_advertisement,
    parse_arp,
    probe_frames,
)

MAC = bytes.fromhex("020000000001")
OTHER = bytes.fromhex("020000000002")
GW_MAC = bytes.fromhex("0200000000fe")
SOURCE = ipaddress.IPv4Address("192.0.2.99").packed
GATEWAY = ipaddress.IPv4Address("192.0.2.1").packed


def test_gratuitous_arp_names_the_source_as_sender_and_target() -> None:
    request, reply = arp_frames(MAC, SOURCE)
    for frame, op in ((request, 1), (reply, 2)):
        assert frame[:6] == b"\xff" * 6 and frame[6:12] == MAC
        assert parse_arp(frame) == (op, MAC, SOURCE)
        assert frame[38:42] == SOURCE  # target protocol address


def test_probe_does_not_teach_anyone_our_address() -> None:
    probe, request = probe_frames(MAC, SOURCE, GATEWAY)
    assert parse_arp(probe) == (1, MAC, b"\x00" * 4) and probe[38:42] == SOURCE
    assert parse_arp(request) == (1, MAC, SOURCE) and request[38:42] == GATEWAY


def test_replies_find_the_gateway_and_any_other_holder_of_the_source() -> None:
    frames = [
        _arp(2, GW_MAC, GATEWAY, MAC, SOURCE, dst=MAC),
        _arp(2, OTHER, SOURCE, MAC, b"\x00" * 4, dst=MAC),
        _arp(2, MAC, SOURCE, MAC, SOURCE),  # our own kernel answering: not a conflict
        b"\x00" * 60,  # not ARP
    ]
    gateway, conflicts = collect_replies(frames, MAC, SOURCE, GATEWAY)
    assert gateway == "02:00:00:00:00:fe" and conflicts == {"02:00:00:00:00:02"}


def test_silent_lan_reports_no_gateway() -> None:
    assert collect_replies([], MAC, SOURCE, GATEWAY) == (None, set())


def test_neighbour_advertisement_is_a_valid_icmpv6_packet() -> None:
    address = ipaddress.IPv6Address("2001:db8:1::99").packed
    frame = neighbour_advertisement(MAC, address)
    assert frame[:6] == bytes.fromhex("333300000001") and frame[12:14] == b"\x86\xdd"
    ip6, icmp = frame[14:54], frame[54:]
    assert ip6[6] == 58 and ip6[7] == 255  # next header ICMPv6, hop limit 255 as RFC 4861 requires
    assert icmp[0] == 136 and struct.unpack("!I", icmp[4:8])[0] & 0x20000000  # override flag
    assert icmp[8:24] == address and icmp[24:26] == b"\x02\x01" and icmp[26:32] == MAC
    pseudo = ip6[8:40] + struct.pack("!I3xB", len(icmp), 58)
    assert _checksum(pseudo + icmp) == 0  # a correct checksum sums to zero


def test_the_child_hands_back_the_report_and_errors() -> None:
    from egress_router.announce import NeighbourReport, _decode, _encode

    report = NeighbourReport("02:00:00:00:00:fe", ("02:aa:00:00:00:01", "02:aa:00:00:00:02"))
    assert _decode(_encode(report)) == report
    assert _decode(_encode(NeighbourReport(None))) == NeighbourReport(None)
    assert _decode(b"-") is None
    try:
        _decode(b"!Operation not permitted")
    except OSError as error:
        assert "Operation not permitted" in str(error)
    else:
        raise AssertionError("an error in the child must reach the router")


def test_a_failing_exchange_is_an_oserror_in_the_router() -> None:
    import pytest

    from egress_router.announce import PacketSocketAnnouncer

    with pytest.raises(OSError):  # no such interface (and, without root, no packet socket)
        PacketSocketAnnouncer().exchange("no-such-if0", "02:00:00:00:00:01", [])
