"""Map elements over netlink (`nft.elements`) and how `NftCli` routes a transaction, without root.

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

from egress_router.errors import ApplyError, SetupError
from egress_router.nft import MapSpec, TableSpec, Transaction, diff
from egress_router.nft import elements as nl
from egress_router.nft.cli import NftCli, element_batch
from egress_router.nft.elements import Batch, BatchTooLarge, ElementWriter, MapCodec
from egress_router.nft.table import creation_script

V4 = "ipv4_addr . inet_service"
V6 = "ipv6_addr . inet_service"
HEADER = struct.Struct("=IHHII")

# `nft --debug=mnl add element inet t m { 8080 : 203.0.113.26 . 80 }` (and the ipv6 map),
# the NFTA_LIST_ELEM attribute; `delete element inet t m { 8080 }`, the whole message body.
NFT_IPV4_ELEMENT = "20000180 0c000180 06000100 1f900000 10000280 0c000100 cb00711a 00500000"
NFT_IPV6_ELEMENT = (
    "2c000180 0c000180 06000100 1f900000 1c000280 18000100 "
    "20010db8 00000000 00000000 00000001 00500000"
)
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


def spec(**maps: dict[str, str]) -> TableSpec:
    return TableSpec(
        "inet",
        "t",
        tuple(
            MapSpec(name, "inet_service", V6 if name.endswith("6") else V4, e)
            for name, e in maps.items()
        ),
        "chain c {\n}",
    )


# -- the element encoding ---------------------------------------------------------------------


def test_an_ipv4_element_is_the_bytes_nft_sends() -> None:
    codec = MapCodec("inet_service", V4)
    assert codec.elements({"8080": "203.0.113.26 . 80"}) == [hexbytes(NFT_IPV4_ELEMENT)]
    assert codec._element("8080", "203.0.113.26 . 80") == hexbytes(NFT_IPV4_ELEMENT)
    assert reference_element(8080, "203.0.113.26", 80) == hexbytes(NFT_IPV4_ELEMENT)


def test_an_ipv6_element_is_the_bytes_nft_sends() -> None:
    codec = MapCodec("inet_service", V6)
    assert codec.elements({"8080": "2001:db8::1 . 80"}) == [hexbytes(NFT_IPV6_ELEMENT)]
    assert codec._element("8080", "2001:db8::1 . 80") == hexbytes(NFT_IPV6_ELEMENT)
    assert reference_element(8080, "2001:db8::1", 80) == hexbytes(NFT_IPV6_ELEMENT)


def test_a_delete_message_is_the_one_nft_sends() -> None:
    codec = MapCodec("inet_service", V4)
    assert codec.keys(["8080"]) == [hexbytes(NFT_DELETE_KEY)]
    batch = Batch()
    batch.delete("inet", "t", "m", codec, ["8080"])
    data, _ = batch.encode(1)
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
def test_the_fast_and_the_general_encoders_agree_with_the_format(
    items: dict[int, tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]],
) -> None:
    for version, value_type in ((4, V4), (6, V6)):
        chosen = {k: (a, p) for k, (a, p) in items.items() if a.version == version}
        elements = {str(k): f"{a} . {p}" for k, (a, p) in chosen.items()}
        codec = MapCodec("inet_service", value_type)
        fast = codec.elements(elements)
        general = [codec._element(k, v) for k, v in elements.items()]
        reference = [reference_element(k, str(a), p) for k, (a, p) in chosen.items()]
        assert fast == general == reference
        assert [decode_element(e) for e in fast] == [
            (k, f"{ipaddress.ip_address(v.split(' . ')[0])} . {v.split(' . ')[1]}")
            for k, v in elements.items()
        ]


def test_ports_out_of_range_are_refused_by_both_encoders() -> None:
    codec = MapCodec("inet_service", V4)
    for key, value in (
        ("70000", "203.0.113.26 . 80"),
        ("80", "203.0.113.26 . 65536"),
        ("-1", "192.0.2.1 . 1"),
    ):
        with pytest.raises(ValueError):
            codec.elements({key: value})
        with pytest.raises(ValueError):
            codec._element(key, value)


# -- the batch ----------------------------------------------------------------------------------


def test_a_batch_is_framed_by_begin_and_end_and_acks_every_message() -> None:
    codec4, codec6 = MapCodec("inet_service", V4), MapCodec("inet_service", V6)
    batch = Batch()
    batch.add(
        "inet", "t", "tcp4", codec4, {str(p): f"203.0.113.{p % 256} . {p}" for p in range(1, 4001)}
    )
    batch.delete("inet", "t", "udp6", codec6, ["53", "54"])
    batch.add("ip6", "t6", "udp6", codec6, {"53": "2001:db8::53 . 5353"})
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
    codec = MapCodec("inet_service", V6)  # the larger of the router's elements
    elements = {str(p): f"2001:db8::{p:x} . {p}" for p in range(1, 50001)}
    batch = Batch()
    batch.add("inet", "t", "tcp6", codec, elements)
    data, meaning = batch.encode(1)
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


def test_wide_concatenations_still_fit_a_message() -> None:
    codec = MapCodec("ipv6_addr . ipv6_addr", "ipv6_addr . ipv6_addr . inet_service")
    assert codec.usable
    batch = Batch()
    batch.add(
        "inet",
        "t",
        "m",
        codec,
        {f"2001:db8::{i:x} . 2001:db8::1": "2001:db8::2 . 2001:db8::3 . 80" for i in range(1000)},
    )
    data, _ = batch.encode(1)
    for m in messages(data)[1:-1]:
        message_elements(m)


# -- element_batch ------------------------------------------------------------------------------


def test_element_batch_carries_adds_and_deletes_in_order() -> None:
    old = spec(
        tcp4={"80": "203.0.113.25 . 80", "81": "203.0.113.25 . 81"}, tcp6={"80": "2001:db8::1 . 80"}
    )
    new = spec(
        tcp4={"80": "203.0.113.25 . 80", "81": "203.0.113.26 . 81"},
        tcp6={"443": "2001:db8::1 . 443"},
    )
    batch = element_batch(diff(old, new))
    assert batch is not None
    assert decoded(batch) == [
        (0x0A0E, "tcp4", {"81": None}),
        (0x0A0C, "tcp4", {"81": "203.0.113.26 . 81"}),
        (0x0A0E, "tcp6", {"80": None}),
        (0x0A0C, "tcp6", {"443": "2001:db8::1 . 443"}),
    ]


def writes(tx_kind: str) -> Transaction:
    tx = Transaction()
    table = spec(tcp4={"80": "203.0.113.25 . 80"})
    if tx_kind == "create":
        tx.create_table(table)
    elif tx_kind == "replace":
        tx.replace_table(table)
    elif tx_kind == "delete":
        tx.delete_table("inet", "t")
    else:
        tx.restore_listing("inet", "t", "table inet t {\n}")
    tx.add_elements(table, "tcp4", {"81": "203.0.113.25 . 81"})
    return tx


@pytest.mark.parametrize("kind", ["create", "replace", "delete", "restore"])
def test_element_batch_refuses_a_transaction_that_writes_a_table(kind: str) -> None:
    assert element_batch(writes(kind)) is None


@pytest.mark.parametrize(
    ("key_type", "value_type"),
    [("ether_addr", V4), ("inet_service", "ether_addr . inet_service"), ("inet_service", "mark")],
)
def test_element_batch_refuses_types_it_does_not_encode(key_type: str, value_type: str) -> None:
    table = TableSpec("inet", "t", (MapSpec("m", key_type, value_type, {}),), "")
    tx = Transaction()
    tx.add_elements(table, "m", {"80": "203.0.113.25 . 80"})
    assert element_batch(tx) is None


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("70000", "203.0.113.25 . 80"),
        ("80", "203.0.113.25 . 70000"),
        ("http", "203.0.113.25 . 80"),
        ("80", "203.0.113.25"),
    ],
)
def test_element_batch_leaves_an_element_it_cannot_encode_to_nft(key: str, value: str) -> None:
    tx = Transaction()
    tx.add_elements(spec(tcp4={}), "tcp4", {"80": "203.0.113.25 . 80", key: value})
    assert element_batch(tx) is None


@pytest.mark.parametrize(
    ("map_name", "value"), [("tcp4", "203.0.113.300 . 80"), ("tcp6", "203.0.113.25 . 80")]
)
def test_element_batch_leaves_a_bad_address_to_nft(map_name: str, value: str) -> None:
    tx = Transaction()
    tx.add_elements(spec(tcp4={}, tcp6={}), map_name, {"80": value})
    assert element_batch(tx) is None


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
        ["delete elements from inet t udp4: No such file or directory (element not found)"],
        True,
    )


def test_without_the_tlv_flag_no_text_is_read(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, kernel = pair
    data = bytearray(ack(2, -errno.EEXIST, "ignored"))
    struct.pack_into("=H", data, 6, NLM_F_CAPPED)  # the flags say no attributes follow
    kernel.send(bytes(data))
    kernel.send(ack(3))
    assert nl._answers(ours, {2, 3}, 1, MEANING) == (
        ["add elements to inet t tcp4: File exists"],
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
        "apply the batch: Operation not permitted (the router needs the NET_ADMIN capability)"
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
    assert failures == ["the kernel did not answer the nftables batch within 0.1 s"]


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
    monkeypatch.setattr(nl, "_grow_send_buffer", lambda sock, size: None)

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
    batch = Batch()
    batch.add(
        "inet",
        "t",
        map_name,
        MapCodec("inet_service", V4),
        {str(k): f"192.0.2.1 . {k}" for k in keys},
    )
    return batch


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
    batch.delete("inet", "t", "udp4", MapCodec("inet_service", V4), ["53"])
    with pytest.raises(ApplyError) as caught:
        writer.write(batch)
    assert str(caught.value) == (
        "failed to apply the nftables transaction: "
        "delete elements from inet t udp4: No such file or directory (no such element)"
    )
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


def test_a_datagram_larger_than_the_send_buffer_is_batch_too_large(
    wired: Callable[[Responder], tuple[ElementWriter, FakeKernel]],
) -> None:
    writer, kernel = wired(acks_all)
    assert writer._socket is not None
    buffer = writer._socket.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    batch = small_batch(range(65536))  # ~2 MB
    assert len(batch.encode(1)[0]) > buffer
    with pytest.raises(BatchTooLarge):
        writer.write(batch)
    writer.write(small_batch(range(1, 2)))  # still usable
    assert len(kernel.batches) == 1


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
    cli = NftCli(binary=str(nft.path))
    writer = StubWriter(nft, error)
    cli.elements = writer
    return cli, writer


TABLE = spec(
    tcp4={str(p): f"203.0.113.{p % 200 + 1} . {p}" for p in range(1, 1201)},
    tcp6={"443": "2001:db8::1 . 8443"},
    udp4={},
)


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
    changed = spec(tcp4={**TABLE.maps[0].elements, "80": "198.51.100.7 . 8080"}, tcp6={}, udp4={})
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
        "tcp4": dict(TABLE.maps[0].elements),
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
    with pytest.raises(ApplyError, match="Could not process rule: File exists"):
        cli.apply(created())
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


def test_a_batch_too_large_for_the_socket_goes_through_one_nft_script(nft: FakeNftBinary) -> None:
    cli, _ = cli_with(nft, BatchTooLarge(1 << 30))
    tx = created()
    cli.apply(tx)
    scripts = [script for _, script in nft.runs()]
    assert scripts == [creation_script(TABLE), "delete table inet t\n", str(tx)]
    assert scripts[-1].startswith("create table inet t")
    assert scripts[-1].count("add element inet t tcp4") == 3  # 1200 elements, 500 a line
    assert "1200 : 203.0.113.1 . 1200" in scripts[-1] and "443 : 2001:db8::1 . 8443" in scripts[-1]


def test_an_element_only_batch_too_large_goes_to_nft(nft: FakeNftBinary) -> None:
    cli, writer = cli_with(nft, BatchTooLarge(1 << 30))
    tx = Transaction()
    tx.add_elements(TABLE, "udp4", {"53": "192.0.2.53 . 5353"})
    cli.apply(tx)
    assert len(writer.batches) == 1
    assert nft.runs() == [("-f -", "add element inet t udp4 { 53 : 192.0.2.53 . 5353 }\n")]


def test_an_element_nft_must_judge_is_added_by_nft_and_undone_if_refused(
    nft: FakeNftBinary,
) -> None:
    cli, writer = cli_with(nft)
    table = spec(tcp4={"80": "203.0.113.25 . 80", "70000": "203.0.113.25 . 80"})
    nft.fail(
        2, "/dev/stdin:1:30-34: Error: Could not resolve service: Value 70000 exceeds valid range\n"
    )
    tx = Transaction()
    tx.create_table(table)
    with pytest.raises(ApplyError, match="Value 70000 exceeds valid range"):
        cli.apply(tx)
    scripts = [script for _, script in nft.runs()]
    assert scripts[0] == creation_script(table)
    assert (
        "add element inet t tcp4 { 80 : 203.0.113.25 . 80, 70000 : 203.0.113.25 . 80 }"
        in scripts[1]
    )
    assert scripts[2] == "delete table inet t\n"
    assert writer.batches == []


def test_a_table_with_an_address_netlink_cannot_encode_is_not_left_half_built(
    nft: FakeNftBinary,
) -> None:
    cli, _ = cli_with(nft)
    table = spec(tcp4={"80": "203.0.113.300 . 80"})
    nft.fail(
        2, "/dev/stdin:1:30-42: Error: Could not resolve hostname: Name or service not known\n"
    )
    tx = Transaction()
    tx.create_table(table)
    with pytest.raises(ApplyError):
        cli.apply(tx)
    assert nft.runs()[-1][1] == "delete table inet t\n"


def test_maps_of_other_types_are_created_by_one_nft_script(nft: FakeNftBinary) -> None:
    cli, writer = cli_with(nft)
    table = TableSpec("inet", "t", (MapSpec("m", "ipv4_addr", "mark", {"192.0.2.1": "0x1"}),), "")
    tx = Transaction()
    tx.create_table(table)
    cli.apply(tx)
    assert [script for _, script in nft.runs()] == [str(tx)]
    assert writer.batches == []


@pytest.mark.parametrize("kind", ["replace", "restore"])
def test_replacing_or_restoring_a_table_is_one_nft_script(nft: FakeNftBinary, kind: str) -> None:
    cli, writer = cli_with(nft)
    tx = writes(kind)
    cli.apply(tx)
    assert [script for _, script in nft.runs()] == [str(tx)]
    assert writer.batches == []


def test_without_netlink_nft_writes_everything(nft: FakeNftBinary) -> None:
    cli = NftCli(binary=str(nft.path), netlink=False)
    assert cli.elements is None
    changes = Transaction()
    changes.add_elements(TABLE, "udp4", {"53": "192.0.2.53 . 5353"})
    for tx in (created(), changes):
        cli.apply(tx)
    assert [script for _, script in nft.runs()] == [str(created()), str(changes)]


def test_an_empty_transaction_does_nothing(nft: FakeNftBinary) -> None:
    cli, writer = cli_with(nft)
    cli.apply(Transaction())
    assert nft.runs() == [] and writer.batches == []


def test_a_missing_nft_is_a_setup_error_with_a_hint(tmp_path: Path) -> None:
    cli = NftCli(binary=str(tmp_path / "no-nft"))
    with pytest.raises(SetupError, match="install the nftables package"):
        cli.apply(created())
