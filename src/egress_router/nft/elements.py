"""Map elements written to nf_tables over netlink, without the nft command.

Loading a large map through `nft -f` costs about 4 µs an element in nft's own parser and
evaluator, which is most of a pod start with 10,000 rules. The kernel takes the same elements
as a netlink batch of NEWSETELEM/DELSETELEM messages in well under a microsecond each, and the
encoding of a port-keyed map is fixed-size. So element changes go this way; tables, chains and
rules are still written by `nft -f`, which is the only place their syntax lives.

A batch is one nf_tables transaction: the kernel applies every message of it or none, as it does
for an `nft -f` script. It is handled while `sendmsg` runs, so its answers are all queued when
`sendmsg` returns.

Only the element types the router's maps use are encoded (`inet_service` keys;
`ipv4_addr`/`ipv6_addr`/`inet_service` values and concatenations of them);
`MapCodec.usable` tells a caller when a map needs nft instead.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable, Iterable, Mapping

from .. import netlink
from ..errors import ApplyError
from ..netlink import (
    NETLINK_NETFILTER,
    NLA_F_NESTED,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_REQUEST,
    NLMSG_ERROR,
)

NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFT_MSG_NEWTABLE = 0
NFT_MSG_NEWSETELEM = 12
NFT_MSG_DELSETELEM = 14
NFTA_TABLE_NAME = 1
NFTA_TABLE_FLAGS = 2

NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_DATA = 2
NFTA_DATA_VALUE = 1

FAMILIES = {"inet": 1, "ip": 2, "arp": 3, "netdev": 5, "bridge": 7, "ip6": 10}

# One message's element list is a netlink attribute, whose length is 16 bits: at most 64 KiB.
_MESSAGE_BYTES = 60000

STEP = "apply the nftables transaction"
ANSWER_TIMEOUT = netlink.ANSWER_TIMEOUT


# --- element encoding -------------------------------------------------------------------------
# A field of a concatenation takes a whole number of 32-bit registers, hence the padding.


class _Field:
    def __init__(self, width: int, encode: Callable[[str], bytes]) -> None:
        self.width = width
        self.encode = encode


def _port(text: str) -> bytes:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"port {text} out of range")
    return value.to_bytes(2, "big")


def _address(family: int) -> Callable[[str], bytes]:
    cache: dict[str, bytes] = {}  # rule sets share few addresses

    def encode(text: str) -> bytes:
        packed = cache.get(text)
        if packed is None:
            try:
                packed = cache[text] = socket.inet_pton(family, text)
            except OSError:
                raise ValueError(f"{text!r} is not an address of this family") from None
        return packed

    return encode


_FIELDS = {
    "inet_service": lambda: _Field(2, _port),
    "ipv4_addr": lambda: _Field(4, _address(socket.AF_INET)),
    "ipv6_addr": lambda: _Field(16, _address(socket.AF_INET6)),
}


def _data_encoder(type_text: str) -> Callable[[str], bytes] | None:
    """`value -> NFTA_SET_ELEM_KEY/DATA payload` for an nft type such as
    `ipv4_addr . inet_service`, or None if it is not one this module knows."""
    names = [name.strip() for name in type_text.split(" . ")]
    if not all(name in _FIELDS for name in names):
        return None
    fields = [_FIELDS[name]() for name in names]
    if len(fields) == 1:
        only = fields[0].encode
        return lambda text: netlink.attr(NFTA_DATA_VALUE, only(text))
    padding = [b"\0" * (-f.width % 4) for f in fields]
    encoders = [f.encode for f in fields]
    size = sum(f.width + len(p) for f, p in zip(fields, padding, strict=True))
    head = netlink.ATTR.pack(netlink.ATTR.size + size, NFTA_DATA_VALUE)

    def concat(text: str) -> bytes:
        parts = text.split(" . ")
        if len(parts) != len(encoders):
            raise ValueError(f"{text!r} does not have {len(encoders)} fields")
        return head + b"".join(e(p) + pad for e, p, pad in zip(encoders, parts, padding, strict=True))

    return concat


class MapCodec:
    """Encodes the elements of one map, given by its nft key and value types."""

    def __init__(self, key_type: str, value_type: str | None) -> None:
        self.key = _data_encoder(key_type)
        self.value = _data_encoder(value_type) if value_type is not None else None
        self.usable = self.key is not None and (value_type is None or self.value is not None)
        self._fast = _port_to_address_port(key_type, value_type)

    def elements(self, items: Mapping[str, str]) -> list[bytes]:
        """`NFTA_LIST_ELEM`s with a key and a value each."""
        if self._fast is not None:
            return self._fast(items)
        return [self._element(k, v) for k, v in items.items()]

    def keys(self, keys: Iterable[str]) -> list[bytes]:
        """`NFTA_LIST_ELEM`s with a key only, as a delete names them."""
        return [self._element(k, None) for k in keys]

    def _element(self, key: str, value: str | None) -> bytes:
        assert self.key is not None
        inner = netlink.attr(NFTA_SET_ELEM_KEY | NLA_F_NESTED, self.key(key))
        if value is not None:
            assert self.value is not None
            inner += netlink.attr(NFTA_SET_ELEM_DATA | NLA_F_NESTED, self.value(value))
        return netlink.attr(NFTA_LIST_ELEM | NLA_F_NESTED, inner)


def _port_to_address_port(
    key_type: str, value_type: str | None
) -> Callable[[Mapping[str, str]], list[bytes]] | None:
    """The router's own maps (`inet_service : ipv4_addr . inet_service`, or ipv6), whose every
    element has the same layout: one precompiled `struct` call an element, four times faster
    than building the attributes one by one, which is what a pod start with 10,000 rules pays."""
    families = {"ipv4_addr . inet_service": socket.AF_INET, "ipv6_addr . inet_service": socket.AF_INET6}
    if key_type != "inet_service" or value_type not in families:
        return None
    family = families[value_type]
    width = 4 if family == socket.AF_INET else 16
    value_size = netlink.ATTR.size + width + 4  # the address, then the port padded to 32 bits
    key_size = netlink.ATTR.size + netlink.ATTR.size + 2 + 2
    prefix = (
        netlink.ATTR.pack(netlink.ATTR.size + key_size + netlink.ATTR.size + value_size, NFTA_LIST_ELEM | NLA_F_NESTED)
        + netlink.ATTR.pack(key_size, NFTA_SET_ELEM_KEY | NLA_F_NESTED)
        + netlink.ATTR.pack(netlink.ATTR.size + 2, NFTA_DATA_VALUE)
    )
    middle = netlink.ATTR.pack(netlink.ATTR.size + value_size, NFTA_SET_ELEM_DATA | NLA_F_NESTED) + netlink.ATTR.pack(
        value_size, NFTA_DATA_VALUE
    )
    pack = struct.Struct(f"!{len(prefix)}sH2x{len(middle)}s{width}sH2x").pack
    pton = socket.inet_pton

    def encode(items: Mapping[str, str]) -> list[bytes]:
        addresses: dict[str, bytes] = {}  # rule sets share few addresses
        out = []
        try:
            for key, value in items.items():
                address, _, port = value.partition(" . ")
                packed = addresses.get(address)
                if packed is None:
                    packed = addresses[address] = pton(family, address)
                out.append(pack(prefix, int(key), middle, packed, int(port)))
        except (struct.error, OSError) as error:  # a port out of 0-65535, a bad address
            raise ValueError(str(error)) from None
        return out

    return encode


# --- the batch ---------------------------------------------------------------------------------


class Batch:
    """Element changes queued for one nf_tables transaction, in order."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, int, str, str, str, list[bytes]]] = []
        self.count = 0  # elements

    def add(self, family: str, table: str, map_name: str, codec: MapCodec, elements: Mapping[str, str]) -> None:
        self._queue(NFT_MSG_NEWSETELEM, NLM_F_CREATE, family, table, map_name, codec.elements(elements))

    def delete(self, family: str, table: str, map_name: str, codec: MapCodec, keys: Iterable[str]) -> None:
        self._queue(NFT_MSG_DELSETELEM, 0, family, table, map_name, codec.keys(keys))

    def _queue(self, kind: int, flags: int, family: str, table: str, map_name: str, encoded: list[bytes]) -> None:
        # All elements of a map have one size: as many a message as its 16-bit list length allows.
        per_message = max(1, _MESSAGE_BYTES // max(1, len(encoded[0]))) if encoded else 1
        for start in range(0, len(encoded), per_message):
            chunk = encoded[start : start + per_message]
            self.messages.append((kind, flags, family, table, map_name, chunk))
            self.count += len(chunk)

    def wake(self, family: str, table: str) -> None:
        """Clear the table's flags, dormant among them: its chains take effect with the rest of
        the batch, all at once (and not at all if the batch is refused)."""
        self.messages.append((NFT_MSG_NEWTABLE, 0, family, table, "", []))

    def __bool__(self) -> bool:
        return bool(self.messages)

    def encode(self, first_sequence: int) -> tuple[bytes, dict[int, str]]:
        """The batch as bytes, and what each message's sequence number stands for."""
        subsystem = NFNL_SUBSYS_NFTABLES.to_bytes(2, "big")
        begin_end = b"\0\0" + subsystem  # AF_UNSPEC, version 0, the subsystem as res_id
        sequence = first_sequence
        out = [netlink.HEADER.pack(20, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, sequence, 0) + begin_end]
        meaning = {sequence: "apply the batch"}
        for kind, flags, family, table, map_name, chunk in self.messages:
            sequence += 1
            body = b"".join(chunk)
            if kind == NFT_MSG_NEWTABLE:
                attrs = netlink.name_attr(NFTA_TABLE_NAME, table) + netlink.attr(NFTA_TABLE_FLAGS, bytes(4))
            else:
                attrs = (
                    netlink.name_attr(NFTA_SET_ELEM_LIST_TABLE, table)
                    + netlink.name_attr(NFTA_SET_ELEM_LIST_SET, map_name)
                    + netlink.ATTR.pack(netlink.ATTR.size + len(body), NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED)
                )
            length = netlink.HEADER.size + 4 + len(attrs) + len(body)
            message_type = NFNL_SUBSYS_NFTABLES << 8 | kind
            genmsg = bytes((FAMILIES[family], 0, 0, 0))
            out += [netlink.HEADER.pack(length, message_type, NLM_F_REQUEST | NLM_F_ACK | flags, sequence, 0), genmsg, attrs, body]
            if kind == NFT_MSG_NEWTABLE:
                meaning[sequence] = f"enable table {family} {table}"
            else:
                verb = "add elements to" if kind == NFT_MSG_NEWSETELEM else "delete elements from"
                meaning[sequence] = f"{verb} {family} {table} {map_name}"
        sequence += 1
        out.append(netlink.HEADER.pack(20, NFNL_MSG_BATCH_END, NLM_F_REQUEST, sequence, 0) + begin_end)
        return b"".join(out), meaning


class BatchTooLarge(Exception):
    """The batch is larger than the socket's send buffer may grow: write it another way."""


class ElementWriter(netlink.Channel):
    """Sends element batches to the kernel over one NETLINK_NETFILTER socket, kept open.

    Kept open because closing it is what costs: when a netfilter netlink socket is released,
    the kernel first waits for the memory of every deleted element to be freed, which takes an
    RCU grace period (8-30 ms here). nft pays that at every run; a router that keeps its socket
    pays it once, at exit."""

    def __init__(self) -> None:
        super().__init__(NETLINK_NETFILTER)

    def write(self, batch: Batch) -> None:
        """Apply the batch as one transaction; raise `ApplyError` (nothing changed) if refused,
        `BatchTooLarge` if the socket cannot take it in one datagram."""
        if not batch:
            return
        # Begin, the messages, end: numbers no earlier batch on this socket used.
        first = self.next_sequence(len(batch.messages) + 2)
        data, meaning = batch.encode(first)
        sock = self.open()
        try:
            _grow_send_buffer(sock, len(data))
            sock.send(data)
        except OSError as error:
            if error.errno in (errno.EMSGSIZE, errno.ENOBUFS):
                raise BatchTooLarge(len(data)) from None
            self.close()
            raise ApplyError(STEP, netlink.explain(error.errno or 0, "send the batch", "")) from None
        failures, complete = _answers(sock, set(meaning) - {first}, first, meaning)
        if not complete:
            self.close()  # answers may still come: none must be read as the next batch's
        if failures:
            raise ApplyError(STEP, "; ".join(failures))

    def open(self) -> socket.socket:
        try:
            return super().open()
        except OSError as error:
            raise ApplyError(
                STEP, f"cannot open a netfilter netlink socket: {error.strerror or error}"
            ) from None


def _grow_send_buffer(sock: socket.socket, size: int) -> None:
    # A batch is one datagram, which must fit the send buffer: 10,000 elements take ~330 KB
    # where the default buffer is 208 KB. Raising it past net.core.wmem_max takes NET_ADMIN,
    # which the router has (it needs it for nftables).
    wanted = size + 4096
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < wanted:
        try:
            sock.setsockopt(socket.SOL_SOCKET, 32, wanted)  # SO_SNDBUFFORCE
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, wanted)


def _answers(
    sock: socket.socket, expected: set[int], begin: int, meaning: dict[int, str]
) -> tuple[list[str], bool]:
    """Read the kernel's answer to every message of the batch (each asked for an ack): the
    problems, in words, and whether every answer came. A batch refused whole (no permission,
    a failed commit) is answered on its first message, which ends the wait."""
    failures: list[str] = []
    while expected:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            failures.append(f"the kernel did not answer the nftables batch within {ANSWER_TIMEOUT:g} s")
            return failures, False
        except OSError as error:  # ENOBUFS: answers were lost; the batch's fate is unknown
            failures.append(f"reading the kernel's answers failed: {error.strerror or error}")
            return failures, False
        for kind, flags, sequence, start, end in netlink.messages(data):
            if kind == NLMSG_ERROR and sequence in meaning:
                expected.discard(sequence)
                code, message = netlink.error_of(data, start, end, flags)
                if code:
                    failures.append(netlink.explain(code, meaning[sequence], message))
                    if sequence == begin:
                        expected.clear()
    return failures, True
