"""Map elements over netlink (`nft.elements`) and how `NftCli` applies a transaction, without root.

The element bytes are checked against what nft itself sends (`nft --debug=mnl`), the batch
against the nfnetlink framing the kernel parses, the answer reader against crafted NLMSG_ERROR
datagrams on a socketpair, and `NftCli` against a fake `nft` binary that records its input.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress_router.errors import ApplyError, Kind, SetupError
from egress_router.nft import Element, MapSpec, TableSpec, Transaction, diff, readback
from egress_router.nft import elements as nl
from egress_router.nft.cli import NftCli
from egress_router.nft.elements import LAYOUTS, Batch, ElementWriter
from egress_router.nft.table import AddElements, DeleteElements, creation_script

HEADER = struct.Struct("=IHHII")

# `nft --debug=mnl add element inet t m { 8080 : 203.0.113.26 . 80 }` (and the ipv6 map),
# the NFTA_LIST_ELEM attribute; `delete element inet t m { 8080 }`, the whole message body.
NFT_IPV4_ELEMENT = "20000180 0c000180 06000100 1f900000 10000280 0c000100 cb00711a 00500000"
NFT_IPV6_ELEMENT = (
    "2c000180 0c000180 06000100 1f900000 1c000280 18000100 "
    "20010db8 00000000 00000000 00000001 00500000"
)
# The same element as the kernel dumps it (NFT_MSG_GETSETELEM, kernel 6.18): no NLA_F_NESTED.
KERNEL_DUMPED_IPV4_ELEMENT = "20000100 0c000100 06000100 1f900000 10000200 0c000100 cb00711a 00500000"
NFT_DELETE_KEY = "10000180 0c000180 06000100 1f900000"
NFT_DELETE_BODY = "01000000 06000100 74000000 06000200 6d000000 14000380 " + NFT_DELETE_KEY


def hexbytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# -- an independent reading of the netlink format ------------------------------------------------


def nla(kind: int, payload: bytes, nested: bool = False) -> bytes:
    length = 4 + len(payload)
    return (
        struct.pack("=HH", length, kind | (0x8000 if nested else 0)) + payload + bytes(-length % 4)
    )


def reference_element(key: int, address: str, port: int) -> bytes:
    """NFTA_LIST_ELEM { KEY { VALUE port }, DATA { VALUE address . port } }, each field of the
    concatenation padded to 32 bits, as linux/netfilter/nf_tables.h describes it."""
    packed = ipaddress.ip_address(address).packed
    key_attr = nla(1, nla(1, key.to_bytes(2, "big")), nested=True)
    data_attr = nla(2, nla(1, packed + port.to_bytes(2, "big") + b"\0\0"), nested=True)
    return nla(1, key_attr + data_attr, nested=True)


def attrs(data: bytes) -> list[tuple[int, bytes]]:
    """The attributes of `data` (type without flags, payload), insisting that every length is
    sound and that they fill `data` exactly."""
    out = []
    position = 0
    while position < len(data):
        length, kind = struct.unpack_from("=HH", data, position)
        assert length >= 4, f"attribute length {length} at {position}"
        assert position + length <= len(data), "attribute runs past its parent"
        out.append((kind & 0x3FFF, data[position + 4 : position + length]))
        position += (length + 3) & ~3
    assert position == len(data), "attributes do not fill their parent"
    return out


def decode_element(element: bytes) -> tuple[str, str | None]:
    """`(key, "address . port")` of one NFTA_LIST_ELEM of a router map."""
    ((kind, inner),) = attrs(element)
    assert kind == 1
    parts = dict(attrs(inner))
    ((_, key),) = attrs(parts[1])
    if 2 not in parts:
        return str(int.from_bytes(key, "big")), None
    ((_, value),) = attrs(parts[2])
    address, port, padding = value[:-4], value[-4:-2], value[-2:]
    assert padding == b"\0\0"
    return str(
        int.from_bytes(key, "big")
    ), f"{ipaddress.ip_address(address)} . {int.from_bytes(port, 'big')}"


class Message:
    def __init__(self, data: bytes, offset: int) -> None:
        self.length, self.type, self.flags, self.sequence, self.port = HEADER.unpack_from(
            data, offset
        )
        self.body = data[offset + HEADER.size : offset + self.length]


def messages(data: bytes) -> list[Message]:
    out = []
    offset = 0
    while offset < len(data):
        message = Message(data, offset)
        assert message.length >= HEADER.size
        out.append(message)
        offset += (message.length + 3) & ~3
    assert offset == len(data), "the batch does not end on a message boundary"
    return out


def message_elements(message: Message) -> tuple[int, str, str, list[bytes]]:
    """(family, table, map, elements) of a NEWSETELEM/DELSETELEM message."""
    family = message.body[0]
    parts = dict(attrs(message.body[4:]))
    elements = [nla(1, payload, nested=True) for _, payload in attrs(parts[3])]
    return family, parts[1].rstrip(b"\0").decode(), parts[2].rstrip(b"\0").decode(), elements


def decoded(batch: Batch) -> list[tuple[int, str, dict[str, str | None]]]:
    """Each message of the batch: (type, map, {key: value})."""
    data, _ = batch.encode(1)
    out = []
    for message in messages(data)[1:-1]:
        if message.type == 0x0A00:  # NEWTABLE: the wake at the end of a creation
            continue
        _, _, map_name, elements = message_elements(message)
        out.append((message.type, map_name, dict(decode_element(e) for e in elements)))
    return out


def typed(items: dict[str, str]) -> dict[int, Element]:
    """{"80": "203.0.113.25 . 80"} (nft's text) -> the plan's typed elements."""
    out = {}
    for key, value in items.items():
        address, _, port = value.partition(" . ")
        out[int(key)] = Element(int(key), address, int(port))
    return out


def spec(**maps: dict[str, str]) -> TableSpec:
    return TableSpec(
        "inet",
        "t",
        tuple(MapSpec(name, 6 if name.endswith("6") else 4, typed(e)) for name, e in maps.items()),
        "chain c {\n}",
    )


def adds(ref: str, map_name: str, items: dict[str, str]) -> AddElements:
    return AddElements(ref, map_name, 6 if map_name.endswith("6") else 4, tuple(typed(items).values()))


def deletes(ref: str, map_name: str, ports: list[int]) -> DeleteElements:
    return DeleteElements(ref, map_name, 6 if map_name.endswith("6") else 4, tuple(ports))


# -- the element encoding ---------------------------------------------------------------------


def test_an_ipv4_element_is_the_bytes_nft_sends() -> None:
    assert LAYOUTS[4].encode([Element(8080, "203.0.113.26", 80)]) == [hexbytes(NFT_IPV4_ELEMENT)]
    assert reference_element(8080, "203.0.113.26", 80) == hexbytes(NFT_IPV4_ELEMENT)


def test_an_ipv6_element_is_the_bytes_nft_sends() -> None:
    assert LAYOUTS[6].encode([Element(8080, "2001:db8::1", 80)]) == [hexbytes(NFT_IPV6_ELEMENT)]
    assert reference_element(8080, "2001:db8::1", 80) == hexbytes(NFT_IPV6_ELEMENT)


def test_an_element_as_the_kernel_dumps_it_is_read() -> None:
    for text in (KERNEL_DUMPED_IPV4_ELEMENT, NFT_IPV4_ELEMENT):
        data = hexbytes(text)
        assert LAYOUTS[4].decode(data, 0, len(data)) == [Element(8080, "203.0.113.26", 80)]


def test_a_delete_message_is_the_one_nft_sends() -> None:
    assert LAYOUTS[4].keys([8080]) == [hexbytes(NFT_DELETE_KEY)]
    data, _ = Batch([deletes("inet t", "m", [8080])]).encode(1)
    delete = messages(data)[1]
    assert delete.type == 0x0A0E
    assert delete.body == hexbytes(NFT_DELETE_BODY)


ports = st.integers(min_value=0, max_value=65535)


@settings(max_examples=300)
@given(
    st.dictionaries(
        ports,
        st.tuples(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), ports),
        min_size=1,
        max_size=20,
    )
)
def test_the_encoder_agrees_with_the_format_and_the_decoder_reads_it_back(
    items: dict[int, tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]],
) -> None:
    for version in (4, 6):
        chosen = [Element(k, str(a), p) for k, (a, p) in items.items() if a.version == version]
        encoded = LAYOUTS[version].encode(chosen)
        assert encoded == [reference_element(*e) for e in chosen]
        joined = b"".join(encoded)
        assert LAYOUTS[version].decode(joined, 0, len(joined)) == chosen


def test_what_the_plan_never_makes_is_refused_not_sent() -> None:
    for element in (Element(70000, "203.0.113.26", 80), Element(80, "203.0.113.26", 65536), Element(80, "2001:db8::1", 80)):
        with pytest.raises(ValueError):
            LAYOUTS[4].encode([element])


def test_an_element_of_another_layout_is_not_misread() -> None:
    element = hexbytes(NFT_IPV4_ELEMENT)
    with pytest.raises(ValueError):
        LAYOUTS[6].decode(element, 0, len(element))
    flagged = nla(1, element[4:] + nla(3, bytes(4)), nested=True)  # plus NFTA_SET_ELEM_FLAGS
    with pytest.raises(ValueError):
        LAYOUTS[4].decode(flagged, 0, len(flagged))


# -- the batch ----------------------------------------------------------------------------------


def test_a_batch_is_framed_by_begin_and_end_and_acks_every_message() -> None:
    batch = Batch(
        [
            adds("inet t", "tcp4", {str(p): f"203.0.113.{p % 256} . {p}" for p in range(1, 4001)}),
            deletes("inet t", "udp6", [53, 54]),
            adds("ip6 t6", "udp6", {"53": "2001:db8::53 . 5353"}),
        ]
    )
    assert batch.count == 4000 + 2 + 1
    data, meaning = batch.encode(41)
    found = messages(data)
    begin, body, end = found[0], found[1:-1], found[-1]

    for edge, kind in ((begin, 0x10), (end, 0x11)):
        assert (edge.length, edge.type, edge.flags) == (20, kind, 0x1)
        assert (
            edge.body == b"\0\0\0\x0a"
        )  # AF_UNSPEC, version 0, res_id NFNL_SUBSYS_NFTABLES (be16)
    assert [m.sequence for m in found] == list(range(41, 41 + len(found)))

    # As many elements a message as its 16-bit list length allows (32 bytes each), in order.
    assert [len(message_elements(m)[3]) for m in body] == [1875, 1875, 250, 2, 1]
    assert [m.type for m in body] == [0x0A0C] * 3 + [0x0A0E, 0x0A0C]
    for m in body:
        assert m.flags & 0x4, "every element message asks for an ack"
        assert m.flags & 0x1
        assert bool(m.flags & 0x400) == (m.type == 0x0A0C)  # NLM_F_CREATE on adds only
    keys = [decode_element(e)[0] for m in body[:3] for e in message_elements(m)[3]]
    assert keys == [str(p) for p in range(1, 4001)]
    assert [message_elements(m)[:3] for m in body[3:]] == [(1, "t", "udp6"), (10, "t6", "udp6")]

    assert meaning == {
        41: "apply the batch",
        42: "add elements to inet t tcp4",
        43: "add elements to inet t tcp4",
        44: "add elements to inet t tcp4",
        45: "delete elements from inet t udp6",
        46: "add elements to ip6 t6 udp6",
    }
    assert end.sequence == 47 and 47 not in meaning


def test_every_length_fits_16_bits_at_50000_elements() -> None:
    elements = {str(p): f"2001:db8::{p:x} . {p}" for p in range(1, 50001)}
    data, meaning = Batch([adds("inet t", "tcp6", elements)]).encode(1)  # the larger elements
    found = messages(data)
    per_message = nl._MESSAGE_BYTES // 44  # an IPv6 element takes 44 bytes
    messages_needed = -(-50000 // per_message)
    assert len(found) == messages_needed + 2 and len(meaning) == messages_needed + 1
    seen: dict[str, str | None] = {}
    for m in found[1:-1]:
        _, _, _, chunk = message_elements(m)  # attrs() checks every length against the bytes
        assert len(m.body) < 65536
        seen.update(decode_element(e) for e in chunk)
    assert seen == elements


def test_a_transactions_element_changes_become_its_batch_in_order() -> None:
    old = spec(
        tcp4={"80": "203.0.113.25 . 80", "81": "203.0.113.25 . 81"}, tcp6={"80": "2001:db8::1 . 80"}
    )
    new = spec(
        tcp4={"80": "203.0.113.25 . 80", "81": "203.0.113.26 . 81"},
        tcp6={"443": "2001:db8::1 . 443"},
    )
    tx = diff(old, new)
    assert decoded(Batch(op for op in tx.ops if isinstance(op, (AddElements, DeleteElements)))) == [
        (0x0A0E, "tcp4", {"81": None}),
        (0x0A0C, "tcp4", {"81": "203.0.113.26 . 81"}),
        (0x0A0E, "tcp6", {"80": None}),
        (0x0A0C, "tcp6", {"443": "2001:db8::1 . 443"}),
    ]


def writes(tx_kind: str) -> Transaction:
    tx = Transaction()
    table = spec(tcp4={"80": "203.0.113.25 . 80"})
    if tx_kind == "replace":
        tx.replace_table(table)
    else:
        tx.restore_listing("inet", "t", "table inet t {\n}")
    return tx


# -- reading the kernel's answers ---------------------------------------------------------------

NLM_F_CAPPED = 0x100


def ack(
    sequence: int, code: int = 0, message: str | None = None, offset_attr: bool = False
) -> bytes:
    """An NLMSG_ERROR as the kernel sends it with NETLINK_CAP_ACK and NETLINK_EXT_ACK."""
    flags = NLM_F_CAPPED
    tlvs = b""
    if offset_attr:
        tlvs += nla(2, struct.pack("=I", 36))  # NLMSGERR_ATTR_OFFS
    if message is not None:
        tlvs += nla(1, message.encode() + b"\0")
    if tlvs:
        flags |= 0x200
    request = HEADER.pack(64, 0x0A0C, 0x405, sequence, 0)
    body = struct.pack("=i", code) + request + tlvs
    return HEADER.pack(HEADER.size + len(body), 2, flags, sequence, 1234) + body


MEANING = {
    1: "apply the batch",
    2: "add elements to inet t tcp4",
    3: "delete elements from inet t udp4",
}


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.settimeout(2.0)
    theirs.settimeout(2.0)
    yield ours, theirs
    ours.close()
    theirs.close()


def test_success_acks_end_the_wait(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, kernel = pair
    kernel.send(ack(2) + ack(3))  # two answers in one datagram are read too
    assert nl._answers(ours, {2, 3}, 1, MEANING) == ([], True)
    kernel.send(ack(2))
    kernel.send(ack(3))
    assert nl._answers(ours, {2, 3}, 1, MEANING) == ([], True)


def test_an_error_carries_the_kernels_own_words(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, kernel = pair
    kernel.send(ack(2))
    kernel.send(ack(3, -errno.ENOENT, "element not found", offset_attr=True))
    assert nl._answers(ours, {2, 3}, 1, MEANING) == (
        [(errno.ENOENT, "delete elements from inet t udp4: No such file or directory (element not found)")],
        True,
    )


def test_without_the_tlv_flag_no_text_is_read(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, kernel = pair
    data = bytearray(ack(2, -errno.EEXIST, "ignored"))
    struct.pack_into("=H", data, 6, NLM_F_CAPPED)  # the flags say no attributes follow
    kernel.send(bytes(data))
    kernel.send(ack(3))
    assert nl._answers(ours, {2, 3}, 1, MEANING) == (
        [(errno.EEXIST, "add elements to inet t tcp4: File exists")],
        True,
    )


def test_an_error_on_the_first_message_ends_the_wait(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nl, "ANSWER_TIMEOUT", 2.0)
    ours, kernel = pair
    kernel.send(ack(1, -errno.EPERM))
    started = time.monotonic()
    failures, complete = nl._answers(ours, {2, 3}, 1, MEANING)
    assert time.monotonic() - started < 1.0
    assert complete
    assert failures == [
        (errno.EPERM, "apply the batch: Operation not permitted (the router needs the NET_ADMIN capability)")
    ]


def test_answers_to_other_sequence_numbers_are_ignored(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, kernel = pair
    kernel.send(ack(99, -errno.ENOENT))  # an earlier batch's, arriving late
    kernel.send(HEADER.pack(20, 0x0A0C, 0, 2, 0) + b"\x01\0\0\0")  # not an ack, though seq 2
    kernel.send(ack(2))
    kernel.send(ack(3))
    assert nl._answers(ours, {2, 3}, 1, MEANING) == ([], True)


def test_a_missing_answer_is_reported_as_a_timeout(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nl, "ANSWER_TIMEOUT", 0.1)
    ours, kernel = pair
    ours.settimeout(0.1)
    kernel.send(ack(2))
    failures, complete = nl._answers(ours, {2, 3}, 1, MEANING)
    assert not complete
    assert failures == [(errno.ETIMEDOUT, "the kernel did not answer the nftables batch within 0.1 s")]


# -- ElementWriter against a fake kernel --------------------------------------------------------

Responder = Callable[[list[Message]], list[bytes]]


class FakeKernel:
    """The other end of the writer's socket: reads each batch and answers it with `respond`."""

    def __init__(self, sock: socket.socket, respond: Responder) -> None:
        self.sock = sock
        self.respond = respond
        self.batches: list[list[Message]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.02)
        while not self.stop.is_set():
            try:
                data = self.sock.recv(1 << 22)
            except TimeoutError:
                continue
            found = messages(data)
            self.batches.append(found)
            for answer in self.respond(found):
                self.sock.send(answer)


def acks_all(found: list[Message]) -> list[bytes]:
    return [ack(m.sequence) for m in found if m.flags & 0x4]


@pytest.fixture
def wired(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[[Responder], tuple[ElementWriter, FakeKernel]]]:
    made: list[tuple[ElementWriter, socket.socket]] = []
    kernels: list[FakeKernel] = []
    monkeypatch.setattr(nl, "make_room", lambda sock, size: None)

    def make(respond: Responder) -> tuple[ElementWriter, FakeKernel]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        ours.settimeout(nl.ANSWER_TIMEOUT)
        writer = ElementWriter()
        writer._socket = ours
        made.append((writer, theirs))
        kernels.append(FakeKernel(theirs, respond))
        return writer, kernels[-1]

    yield make
    for kernel in kernels:
        kernel.stop.set()
        kernel.thread.join(timeout=5)
    for writer, theirs in made:
        writer.close()
        theirs.close()


def small_batch(keys: range, map_name: str = "tcp4") -> Batch:
    return Batch([adds("inet t", map_name, {str(k): f"192.0.2.1 . {k}" for k in keys})])


def test_one_socket_carries_many_batches_with_fresh_sequence_numbers(
    wired: Callable[[Responder], tuple[ElementWriter, FakeKernel]],
) -> None:
    writer, kernel = wired(acks_all)
    sock = writer._socket
    for n in range(20):
        writer.write(small_batch(range(n * 1500, n * 1500 + 1500)))
    assert writer._socket is sock, "the socket is kept open between batches"
    sequences = [m.sequence for batch in kernel.batches for m in batch]
    assert len(kernel.batches) == 20
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences))), "never repeated"


def test_a_late_answer_to_an_earlier_batch_is_not_read_as_this_ones(
    wired: Callable[[Responder], tuple[ElementWriter, FakeKernel]],
) -> None:
    earlier: list[int] = []

    def respond(found: list[Message]) -> list[bytes]:
        # Before this batch's answers, a refusal of every message of the previous batch.
        stale = [ack(s, -errno.ENOENT, "stale") for s in earlier]
        earlier[:] = [m.sequence for m in found]
        return stale + acks_all(found)

    writer, kernel = wired(respond)
    for n in range(3):
        writer.write(small_batch(range(n * 10, n * 10 + 10)))
    assert len(kernel.batches) == 3


def test_a_refused_message_raises_apply_error_and_keeps_the_socket(
    wired: Callable[[Responder], tuple[ElementWriter, FakeKernel]],
) -> None:
    def respond(found: list[Message]) -> list[bytes]:
        return [
            ack(
                m.sequence,
                -errno.ENOENT if m.type == 0x0A0E else 0,
                "no such element" if m.type == 0x0A0E else None,
            )
            for m in found
            if m.flags & 0x4
        ]

    writer, _ = wired(respond)
    sock = writer._socket
    batch = small_batch(range(80, 82))
    batch.add(deletes("inet t", "udp4", [53]))
    with pytest.raises(ApplyError) as caught:
        writer.write(batch)
    assert str(caught.value) == (
        "failed to apply the nftables transaction: "
        "delete elements from inet t udp4: No such file or directory (no such element)"
    )
    assert caught.value.kind is Kind.NOT_FOUND, "the kind is the kernel's errno, not its words"
    assert writer._socket is sock
    writer.write(small_batch(range(1, 3)))  # the next batch is not confused by the failure


def test_a_batch_without_answers_times_out_and_drops_the_socket(
    wired: Callable[[Responder], tuple[ElementWriter, FakeKernel]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nl, "ANSWER_TIMEOUT", 0.1)
    writer, _ = wired(lambda found: [])
    assert writer._socket is not None
    writer._socket.settimeout(0.1)
    with pytest.raises(ApplyError, match="did not answer the nftables batch within 0.1 s"):
        writer.write(small_batch(range(1, 3)))
    assert writer._socket is None, "a socket with answers still due must not be reused"


def test_an_empty_batch_sends_nothing(
    wired: Callable[[Responder], tuple[ElementWriter, FakeKernel]],
) -> None:
    writer, kernel = wired(acks_all)
    writer.write(Batch())
    writer.write(small_batch(range(1, 2)))
    assert len(kernel.batches) == 1


class Buffer:
    """A socket's send buffer as the kernel manages it: SO_SNDBUF capped at twice wmem_max,
    SO_SNDBUFFORCE refused or not."""

    def __init__(self, size: int, wmem_max: int, force: bool) -> None:
        self.size, self.wmem_max, self.force = size, wmem_max, force

    def getsockopt(self, level: int, option: int) -> int:
        return self.size

    def setsockopt(self, level: int, option: int, value: int) -> None:
        if option == nl.SO_SNDBUFFORCE:
            if not self.force:
                raise PermissionError(errno.EPERM, "Operation not permitted")
            self.size = 2 * value
        else:
            self.size = 2 * min(value, self.wmem_max)


def test_a_large_batch_gets_the_buffer_it_needs_when_forcing_is_allowed() -> None:
    sock = Buffer(212992, 212992, force=True)
    nl.make_room(sock, 2_000_000)  # type: ignore[arg-type]
    assert sock.size >= 2_000_000


def test_a_batch_larger_than_the_socket_may_send_is_refused_explicitly_before_sending() -> None:
    with pytest.raises(ApplyError) as caught:
        nl.make_room(Buffer(212992, 212992, force=False), 2_000_000)  # type: ignore[arg-type]
    assert caught.value.kind is Kind.NOT_PERMITTED
    assert "2000000 bytes, more than this socket may send (425984 bytes" in str(caught.value)
    assert "SO_SNDBUFFORCE, which was refused" in str(caught.value)
    nl.make_room(Buffer(212992, 212992, force=False), 400_000)  # type: ignore[arg-type]  # wmem_max's room is enough


# -- NftCli: which way a transaction goes -------------------------------------------------------

FAKE_NFT = """#!/bin/sh
d='{dir}'
n=$(( $(cat "$d/count") + 1 ))
echo "$n" > "$d/count"
printf '%s\\n' "$*" > "$d/args.$n"
cat > "$d/stdin.$n"
if [ -f "$d/fail.$n" ]; then cat "$d/fail.$n" >&2; exit 1; fi
exit 0
"""


class FakeNftBinary:
    """An executable standing in for nft: records each run's arguments and input, and fails
    the runs it is told to."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir()
        (self.dir / "count").write_text("0\n")
        self.path = self.dir / "nft"
        self.path.write_text(FAKE_NFT.format(dir=self.dir))
        self.path.chmod(self.path.stat().st_mode | stat.S_IXUSR)

    def fail(self, run: int, stderr: str) -> None:
        (self.dir / f"fail.{run}").write_text(stderr)

    def runs(self) -> list[tuple[str, str]]:
        count = int((self.dir / "count").read_text())
        return [
            ((self.dir / f"args.{n}").read_text().strip(), (self.dir / f"stdin.{n}").read_text())
            for n in range(1, count + 1)
        ]


class StubWriter(ElementWriter):
    def __init__(self, nft: FakeNftBinary, error: Exception | None = None) -> None:
        super().__init__()
        self.nft = nft
        self.error = error
        self.batches: list[Batch] = []
        self.nft_runs_before: list[int] = []

    def write(self, batch: Batch) -> None:
        self.batches.append(batch)
        self.nft_runs_before.append(len(self.nft.runs()))
        if self.error is not None:
            raise self.error


@pytest.fixture
def nft(tmp_path: Path) -> FakeNftBinary:
    return FakeNftBinary(tmp_path / "fake-nft")


def cli_with(nft: FakeNftBinary, error: Exception | None = None) -> tuple[NftCli, StubWriter]:
    writer = StubWriter(nft, error)
    return NftCli(binary=str(nft.path), elements=writer), writer


TABLE = spec(
    tcp4={str(p): f"203.0.113.{p % 200 + 1} . {p}" for p in range(1, 1201)},
    tcp6={"443": "2001:db8::1 . 8443"},
    udp4={},
)._replace(body="chain c {\n\ttype filter hook input priority 0; policy accept;\n\tcounter\n\tcounter\n}\nchain d {\n}")


def all_elements(batch: Batch) -> dict[str, dict[str, str | None]]:
    out: dict[str, dict[str, str | None]] = {}
    for _, map_name, elements in decoded(batch):
        out.setdefault(map_name, {}).update(elements)
    return out


def created() -> Transaction:
    tx = Transaction()
    tx.create_table(TABLE)
    return tx


def test_an_element_only_transaction_never_runs_nft(nft: FakeNftBinary) -> None:
    cli, writer = cli_with(nft)
    changed = TABLE.with_elements({"tcp4": {**TABLE.maps[0].elements, 80: Element(80, "198.51.100.7", 8080)}})
    cli.apply(diff(TABLE, changed))
    assert nft.runs() == []
    assert len(writer.batches) == 1
    assert decoded(writer.batches[0]) == [
        (0x0A0E, "tcp4", {"80": None}),
        (0x0A0C, "tcp4", {"80": "198.51.100.7 . 8080"}),
        (0x0A0E, "tcp6", {"443": None}),
    ]


def test_creating_a_table_runs_nft_without_elements_then_fills_it_in_one_batch(
    nft: FakeNftBinary,
) -> None:
    cli, writer = cli_with(nft)
    cli.apply(created())
    ((args, script),) = nft.runs()
    assert args == "-f -"
    assert script == creation_script(TABLE)
    assert "create table inet t" in script and "add element" not in script
    assert "flags dormant" in script, "no packet may meet the table before its maps are full"
    assert writer.nft_runs_before == [1], "the batch is written once nft has built the table"
    assert all_elements(writer.batches[0]) == {
        "tcp4": {str(p): f"{e.address} . {e.remote_port}" for p, e in TABLE.maps[0].elements.items()},
        "tcp6": {"443": "2001:db8::1 . 8443"},
    }
    # The batch's last message wakes the table: NEWTABLE "t" with its flags cleared.
    data, meaning = writer.batches[0].encode(1)
    wake = messages(data)[-2]
    assert wake.type == 0x0A00 and meaning[wake.sequence] == "enable table inet t"
    assert dict(attrs(wake.body[4:])) == {1: b"t\0", 2: bytes(4)}


def test_a_refused_table_is_not_filled(nft: FakeNftBinary) -> None:
    cli, writer = cli_with(nft)
    nft.fail(1, "/dev/stdin:1:1-20: Error: Could not process rule: File exists\n")
    with pytest.raises(ApplyError, match="Could not process rule: File exists") as caught:
        cli.apply(created())
    assert caught.value.kind is Kind.EXISTS
    assert len(nft.runs()) == 1
    assert writer.batches == []


def test_a_refused_batch_deletes_the_new_table_again(nft: FakeNftBinary) -> None:
    refusal = ApplyError(
        "apply the nftables transaction",
        "add elements to inet t tcp4: Too many open files in system",
    )
    cli, _ = cli_with(nft, refusal)
    with pytest.raises(ApplyError) as caught:
        cli.apply(created())
    assert caught.value is refusal
    assert [script for _, script in nft.runs()] == [creation_script(TABLE), "delete table inet t\n"]


@pytest.mark.parametrize("kind", ["replace", "restore"])
def test_replacing_or_restoring_a_table_is_one_nft_script(nft: FakeNftBinary, kind: str) -> None:
    cli, writer = cli_with(nft)
    tx = writes(kind)
    cli.apply(tx)
    assert [script for _, script in nft.runs()] == [str(tx)]
    assert writer.batches == []


def test_an_empty_transaction_does_nothing(nft: FakeNftBinary) -> None:
    cli, writer = cli_with(nft)
    cli.apply(Transaction())
    assert nft.runs() == [] and writer.batches == []


def test_a_missing_nft_is_a_setup_error_with_a_hint(tmp_path: Path) -> None:
    cli = NftCli(binary=str(tmp_path / "no-nft"))
    with pytest.raises(SetupError, match="install the nftables package"):
        cli.apply(created())


# -- reading the table back: the restart's dumps --------------------------------------------------

NLM_F_MULTI = 0x2


def userdata(comment: str) -> bytes:
    """libnftnl's userdata for a table comment: type 0, length, the text with its NUL."""
    text = comment.encode() + b"\0"
    return bytes((0, len(text))) + text


def dumped_table(sequence: int, name: str, comment: str, flags: int = 0) -> bytes:
    body = b"\x01\0\0\0" + nla(1, name.encode() + b"\0") + nla(2, flags.to_bytes(4, "big"))
    body += nla(6, userdata(comment)) + nla(3, (4).to_bytes(4, "big"))  # NFTA_TABLE_USE
    return HEADER.pack(HEADER.size + len(body), 0x0A00, NLM_F_MULTI, sequence, 1234) + body


def dumped_elements(sequence: int, map_name: str, elements: list[Element]) -> bytes:
    layout = LAYOUTS[6 if map_name.endswith("6") else 4]
    body = b"\x01\0\0\0" + nla(1, b"t\0") + nla(2, map_name.encode() + b"\0")
    body += nla(3, b"".join(layout.encode(elements)), nested=True)
    return HEADER.pack(HEADER.size + len(body), 0x0A0C, NLM_F_MULTI, sequence, 1234) + body


def done(sequence: int) -> bytes:
    return HEADER.pack(20, 3, NLM_F_MULTI, sequence, 1234) + bytes(4)


def dumped_rule(sequence: int, chain: str) -> bytes:
    body = b"\x01\0\0\0" + nla(1, b"t\0") + nla(2, chain.encode() + b"\0") + nla(3, bytes(8))  # and a handle
    return HEADER.pack(HEADER.size + len(body), 0x0A06, NLM_F_MULTI, sequence, 1234) + body


def dumping(
    tables: list[tuple[str, str, int]], maps: dict[str, list[Element]], rules: dict[str, int] | None = None
) -> Responder:
    """A kernel that answers GETTABLE, GETRULE and GETSETELEM dumps; a map's elements come in
    messages of 700 at most, as the kernel splits a dump over several."""

    def respond(found: list[Message]) -> list[bytes]:
        out = []
        for m in found:
            if m.type == 0x0A07:
                counts = TABLE.rules() if rules is None else rules
                out.append(b"".join(dumped_rule(m.sequence, c) for c, n in counts.items() for _ in range(n)) + done(m.sequence))
            elif m.type == 0x0A01:
                out.append(b"".join(dumped_table(m.sequence, *t) for t in tables) + done(m.sequence))
            elif m.type == 0x0A0D:
                name = dict(attrs(m.body[4:]))[2].rstrip(b"\0").decode()
                items = maps.get(name, [])
                parts = [dumped_elements(m.sequence, name, items[i : i + 700]) for i in range(0, len(items), 700)]
                out += [*parts, done(m.sequence)]
        return out

    return respond


def test_a_restart_reads_its_own_table_by_dumps(
    wired: Callable[[Responder], tuple[ElementWriter, FakeKernel]],
) -> None:
    held_tcp4 = [Element(p, "203.0.113.25", p + 1) for p in range(1, 2001)]
    held_tcp6 = [Element(443, "2001:db8::1", 8443)]
    writer, kernel = wired(dumping([("other", "", 0), ("t", TABLE.full_comment, 0)], {"tcp4": held_tcp4, "tcp6": held_tcp6}))
    held = readback.read(writer, TABLE)
    assert held.exists and held.table is not None
    assert held.table.map("tcp4").elements == {e.port: e for e in held_tcp4}
    assert held.table.map("tcp6").elements == {443: held_tcp6[0]}
    assert held.table.map("udp4").elements == {}
    assert held.table.skeleton() == TABLE.skeleton()
    assert [m.type for batch in kernel.batches for m in batch] == [0x0A01, 0x0A07, 0x0A0D, 0x0A0D, 0x0A0D]


@pytest.mark.parametrize(
    ("tables", "exists"),
    [
        pytest.param([], False, id="no table"),
        pytest.param([("t", "managed by an older version; skeleton 0123456789abcdef", 0)], True, id="another tag"),
        pytest.param([("t", TABLE.full_comment, 1)], True, id="dormant"),
    ],
)
def test_a_table_that_is_not_this_versions_is_not_read_further(
    wired: Callable[[Responder], tuple[ElementWriter, FakeKernel]], tables: list[tuple[str, str, int]], exists: bool
) -> None:
    writer, kernel = wired(dumping(tables, {}))
    assert readback.read(writer, TABLE) == (exists, None)
    assert [m.type for batch in kernel.batches for m in batch] == [0x0A01], "no element dump"


def test_the_rules_of_each_chain_are_counted_against_the_structure() -> None:
    assert TABLE.rules() == {"c": 2, "d": 0}


@pytest.mark.parametrize("rules", [{"c": 3}, {"c": 1}, {"c": 2, "d": 1}], ids=["added", "deleted", "in another chain"])
def test_a_table_with_its_tag_but_other_rules_is_not_this_structure(
    wired: Callable[[Responder], tuple[ElementWriter, FakeKernel]], rules: dict[str, int]
) -> None:
    writer, kernel = wired(dumping([("t", TABLE.full_comment, 0)], {}, rules))
    assert readback.read(writer, TABLE) == (True, None)
    assert 0x0A0D not in [m.type for batch in kernel.batches for m in batch], "no element dump"


def test_a_refused_dump_is_an_apply_error_of_the_kernels_kind(
    wired: Callable[[Responder], tuple[ElementWriter, FakeKernel]],
) -> None:
    writer, _ = wired(lambda found: [ack(m.sequence, -errno.EPERM) for m in found])
    with pytest.raises(ApplyError) as caught:
        readback.read(writer, TABLE)
    assert caught.value.kind is Kind.NOT_PERMITTED


# -- `egress-router plan` is what a new pod sends -------------------------------------------------


def batch_as_nft(batch: list[Message]) -> list[tuple[str, str, list[str]]]:
    """The batch the kernel received, read with this file's own decoder and written in nft's
    syntax: (command, map, items), consecutive messages of one command and map joined."""
    out: list[tuple[str, str, list[str]]] = []
    for m in batch[1:-1]:
        if m.type == 0x0A00:
            assert dict(attrs(m.body[4:])) == {1: b"egress_router\0", 2: bytes(4)}  # flags cleared
            out.append(("add table", "", []))
            continue
        family, table, map_name, elements = message_elements(m)
        assert (family, table, m.type) == (1, "egress_router", 0x0A0C)
        items = [f"{key} : {value}" for key, value in map(decode_element, elements)]
        if out and out[-1][:2] == ("add element", map_name):
            out[-1][2].extend(items)
        else:
            out.append(("add element", map_name, items))
    return out


def text_as_nft(text: str) -> list[tuple[str, str, list[str]]]:
    """The same reading of `add element` / `add table` lines."""
    out: list[tuple[str, str, list[str]]] = []
    for line in text.splitlines():
        if line == "add table inet egress_router":
            out.append(("add table", "", []))
            continue
        head, _, rest = line.partition(" { ")
        command, map_name = head.rsplit(" ", 1)[0].removesuffix(" inet egress_router"), head.rsplit(" ", 1)[1]
        items = rest.removesuffix(" }").split(", ")
        if out and out[-1][:2] == (command, map_name):
            out[-1][2].extend(items)
        else:
            out.append((command, map_name, items))
    return out


def test_plan_shows_exactly_what_a_new_pod_sends(
    nft: FakeNftBinary, wired: Callable[[Responder], tuple[ElementWriter, FakeKernel]]
) -> None:
    from egress_router.cli import render_plan
    from egress_router.config import load_environment
    from egress_router.nft.table import BATCH_MARK
    from egress_router.plan import build_plan

    many = "".join(f"{p} tcp 203.0.113.{p % 3 + 25} {p + 1}\n" for p in range(10000, 12400))
    env = {
        "EGRESS_SOURCE": "192.0.2.99/24,2001:db8:1::99/64",
        "EGRESS_GATEWAY": "192.0.2.1,2001:db8:1::1",
        "EGRESS_DESTINATION": f"80 tcp 203.0.113.25\n53 udp 2001:db8:2::53 5353\n{many}203.0.113.27\n",
    }
    config = load_environment(env)
    shown = render_plan(config)
    structure, batch_text = shown[shown.index("create table") :].split(BATCH_MARK)

    writer, kernel = wired(acks_all)
    cli = NftCli(binary=str(nft.path), elements=writer)
    table = build_plan(config).table
    assert table is not None
    tx = Transaction()
    tx.create_table(table)
    cli.apply(tx)

    ((_, script),) = nft.runs()
    assert script == structure
    (sent,) = kernel.batches
    assert batch_as_nft(sent) == text_as_nft(batch_text)
    assert sum(len(items) for _, _, items in batch_as_nft(sent)) == 2402  # every mapping, once


def test_a_table_whose_map_is_gone_is_not_this_structure(
    wired: Callable[[Responder], tuple[ElementWriter, FakeKernel]],
) -> None:
    tables = dumping([("t", TABLE.full_comment, 0)], {})

    def respond(found: list[Message]) -> list[bytes]:
        if any(m.type == 0x0A0D for m in found):
            return [ack(m.sequence, -errno.ENOENT) for m in found]
        return tables(found)

    writer, _ = wired(respond)
    assert readback.read(writer, TABLE) == (True, None)
