"""Map elements over netlink, without the nft command: written as one nf_tables batch, and
decoded from the kernel's dumps (`nft.readback`).

Loading a large map through `nft -f` costs about 4 µs an element in nft's own parser and
evaluator, which is most of a pod start with 10,000 rules. The kernel takes the same elements
as a netlink batch of NEWSETELEM/DELSETELEM messages in well under a microsecond each, and
the router's maps have one layout (`inet_service : ipvN_addr . inet_service`), whose elements
all have one fixed size: one precompiled `struct` encodes (and decodes) each of them. Tables,
chains and rules are still written by `nft -f`, which is the only place their syntax lives.

A batch is one nf_tables transaction: the kernel applies every message of it or none, as it does
for an `nft -f` script. It is one datagram, handled while `sendmsg` runs, so its answers are all
queued when `sendmsg` returns.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterable, Sequence
from ipaddress import ip_address
from typing import NamedTuple

from .. import netlink
from ..errors import ApplyError, Kind
from ..netlink import NETLINK_NETFILTER, NLA_F_NESTED, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, NLMSG_ERROR
from .table import AddElements, Element, ElementOperation

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
SO_SNDBUFFORCE = 32

# One message's element list is a netlink attribute, whose length is 16 bits: at most 64 KiB.
_MESSAGE_BYTES = 60000

STEP = "apply the nftables transaction"
READ = "read the nftables table"
ANSWER_TIMEOUT = netlink.ANSWER_TIMEOUT


# --- the one element layout ---------------------------------------------------------------------
# NFTA_LIST_ELEM { KEY { VALUE port }, DATA { VALUE address . port } }, each field of the
# concatenation padded to a 32-bit register.


class _Layout:
    """Elements of a map whose addresses are of one family, as bytes and back."""

    def __init__(self, family: int) -> None:
        self.family = socket.AF_INET if family == 4 else socket.AF_INET6
        width = 4 if family == 4 else 16
        a = netlink.ATTR
        value_size = a.size + width + 4  # the address, then the port padded to 32 bits
        key_size = a.size + a.size + 2 + 2
        self.prefix = (
            a.pack(a.size + key_size + a.size + value_size, NFTA_LIST_ELEM | NLA_F_NESTED)
            + a.pack(key_size, NFTA_SET_ELEM_KEY | NLA_F_NESTED)
            + a.pack(a.size + 2, NFTA_DATA_VALUE)
        )
        self.middle = a.pack(a.size + value_size, NFTA_SET_ELEM_DATA | NLA_F_NESTED) + a.pack(value_size, NFTA_DATA_VALUE)
        self.struct = struct.Struct(f"!{len(self.prefix)}sH2x{len(self.middle)}s{width}sH2x")
        # The kernel dumps the same layout without NLA_F_NESTED on the nested attributes.
        self.dumped = (_unflagged(self.prefix), _unflagged(self.middle))
        self.key_prefix = a.pack(a.size + key_size, NFTA_LIST_ELEM | NLA_F_NESTED) + self.prefix[a.size :]
        self.key_struct = struct.Struct(f"!{len(self.key_prefix)}sH2x")

    def encode(self, elements: Iterable[Element]) -> list[bytes]:
        pack, prefix, middle, pton = self.struct.pack, self.prefix, self.middle, socket.inet_pton
        addresses: dict[str, bytes] = {}  # rule sets share few addresses
        out = []
        try:
            for port, address, remote_port in elements:
                packed = addresses.get(address)
                if packed is None:
                    packed = addresses[address] = pton(self.family, address)
                out.append(pack(prefix, port, middle, packed, remote_port))
        except (struct.error, OSError) as error:  # the plan never makes one: a caller's mistake
            raise ValueError(f"cannot encode a map element: {error}") from None
        return out

    def keys(self, ports: Iterable[int]) -> list[bytes]:
        """Elements with a key only, as a delete names them."""
        pack, prefix = self.key_struct.pack, self.key_prefix
        return [pack(prefix, port) for port in ports]

    def decode(self, data: bytes, start: int, end: int) -> list[Element]:
        """The elements of an NFTA_SET_ELEM_LIST_ELEMENTS payload as the kernel dumps it."""
        if (end - start) % self.struct.size:
            raise ValueError("a map element of another layout")
        known = {self.dumped, (self.prefix, self.middle)}
        addresses: dict[bytes, str] = {}
        out = []
        new = tuple.__new__  # the named tuple without its Python-level __new__: twice as fast
        for prefix, port, middle, packed, remote_port in self.struct.iter_unpack(memoryview(data)[start:end]):
            if (prefix, middle) not in known:
                raise ValueError("a map element of another layout")
            address = addresses.get(packed)
            if address is None:
                # Written as the plan writes it (ipaddress's form, which inet_ntop's differs from
                # for IPv4-mapped addresses), so that equal elements compare equal.
                address = addresses[packed] = str(ip_address(packed))
            out.append(new(Element, (port, address, remote_port)))
        return out


def _unflagged(headers: bytes) -> bytes:
    """Attribute headers with NLA_F_NESTED cleared."""
    out = bytearray(headers)
    for position in range(0, len(out), netlink.ATTR.size):
        length, kind = netlink.ATTR.unpack_from(out, position)
        netlink.ATTR.pack_into(out, position, length, kind & ~NLA_F_NESTED)
    return bytes(out)


LAYOUTS = {4: _Layout(4), 6: _Layout(6)}


# --- the batch ---------------------------------------------------------------------------------


class _Message(NamedTuple):
    kind: int
    flags: int
    family: str
    table: str
    map_name: str
    elements: Sequence[bytes]


class Batch:
    """Element changes queued for one nf_tables transaction, in order."""

    def __init__(self, ops: Iterable[ElementOperation] = ()) -> None:
        self.messages: list[_Message] = []
        self.count = 0  # elements
        for op in ops:
            self.add(op)

    def add(self, op: ElementOperation) -> None:
        family, _, table = op.ref.partition(" ")
        layout = LAYOUTS[op.family]
        if isinstance(op, AddElements):
            self._queue(NFT_MSG_NEWSETELEM, NLM_F_CREATE, family, table, op.map_name, layout.encode(op.elements))
        else:
            self._queue(NFT_MSG_DELSETELEM, 0, family, table, op.map_name, layout.keys(op.ports))

    def _queue(self, kind: int, flags: int, family: str, table: str, map_name: str, encoded: list[bytes]) -> None:
        # All elements of a map have one size: as many a message as its 16-bit list length allows.
        per_message = max(1, _MESSAGE_BYTES // max(1, len(encoded[0]))) if encoded else 1
        for start in range(0, len(encoded), per_message):
            chunk = encoded[start : start + per_message]
            self.messages.append(_Message(kind, flags, family, table, map_name, chunk))
            self.count += len(chunk)

    def wake(self, family: str, table: str) -> None:
        """Clear the table's flags, dormant among them: its chains take effect with the rest of
        the batch, all at once (and not at all if the batch is refused)."""
        self.messages.append(_Message(NFT_MSG_NEWTABLE, 0, family, table, "", ()))

    def __bool__(self) -> bool:
        return bool(self.messages)

    def encode(self, first_sequence: int) -> tuple[bytes, dict[int, str]]:
        """The batch as bytes, and what each message's sequence number stands for."""
        sequence = first_sequence
        out = [_begin_end(NFNL_MSG_BATCH_BEGIN, sequence)]
        meaning = {sequence: "apply the batch"}
        for kind, flags, family, table, map_name, chunk in self.messages:
            sequence += 1
            body = b"".join(chunk)
            if kind == NFT_MSG_NEWTABLE:
                attrs = netlink.name_attr(NFTA_TABLE_NAME, table) + netlink.attr(NFTA_TABLE_FLAGS, bytes(4))
                meaning[sequence] = f"enable table {family} {table}"
            else:
                attrs = (
                    netlink.name_attr(NFTA_SET_ELEM_LIST_TABLE, table)
                    + netlink.name_attr(NFTA_SET_ELEM_LIST_SET, map_name)
                    + netlink.ATTR.pack(netlink.ATTR.size + len(body), NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED)
                )
                verb = "add elements to" if kind == NFT_MSG_NEWSETELEM else "delete elements from"
                meaning[sequence] = f"{verb} {family} {table} {map_name}"
            length = netlink.HEADER.size + 4 + len(attrs) + len(body)
            head = netlink.HEADER.pack(length, _type(kind), NLM_F_REQUEST | NLM_F_ACK | flags, sequence, 0)
            out += [head, genmsg(family), attrs, body]
        out.append(_begin_end(NFNL_MSG_BATCH_END, sequence + 1))
        return b"".join(out), meaning


def _type(kind: int) -> int:
    return NFNL_SUBSYS_NFTABLES << 8 | kind


def genmsg(family: str) -> bytes:
    return bytes((FAMILIES[family], 0, 0, 0))  # nfgenmsg: family, version 0, res_id 0


def _begin_end(kind: int, sequence: int) -> bytes:
    # AF_UNSPEC, version 0, the subsystem as res_id (big-endian).
    return netlink.HEADER.pack(20, kind, NLM_F_REQUEST, sequence, 0) + b"\0\0" + NFNL_SUBSYS_NFTABLES.to_bytes(2, "big")


# --- the socket ----------------------------------------------------------------------------------


class ElementWriter(netlink.Channel):
    """Sends element batches to the kernel, and reads a table back, over one NETLINK_NETFILTER
    socket, kept open.

    Kept open because closing it is what costs: when a netfilter netlink socket is released,
    the kernel first waits for the memory of every deleted element to be freed, which takes an
    RCU grace period (8-30 ms here). nft pays that at every run; a router that keeps its socket
    pays it once, at exit."""

    def __init__(self) -> None:
        super().__init__(NETLINK_NETFILTER)

    def write(self, batch: Batch) -> None:
        """Apply the batch as one transaction; raise `ApplyError` (nothing changed) if refused."""
        if not batch:
            return
        # Begin, the messages, end: numbers no earlier batch on this socket used.
        first = self.next_sequence(len(batch.messages) + 2)
        data, meaning = batch.encode(first)
        sock = self.open()
        make_room(sock, len(data))
        try:
            sock.send(data)
        except OSError as error:
            self.close()
            code = error.errno or 0
            raise ApplyError(STEP, netlink.explain(code, "send the batch", ""), Kind.of_errno(code)) from None
        failures, complete = _answers(sock, set(meaning) - {first}, first, meaning)
        if not complete:
            self.close()  # answers may still come: none must be read as the next batch's
        if failures:
            code = failures[0][0]
            raise ApplyError(STEP, "; ".join(text for _, text in failures), Kind.of_errno(code))

    def dump_all(self, kind: int, body: bytes) -> list[tuple[int, bytes, int, int]]:
        """The answers to an nf_tables dump request (`kind` an NFT_MSG_GET*); raises `ApplyError`
        with the kernel's kind if it is refused."""
        try:
            return list(self.dump(_type(kind), body))
        except netlink.NetlinkError as error:
            code = error.errno or 0
            raise ApplyError(READ, netlink.explain(code, "dump", error.detail), Kind.of_errno(code)) from None

    def open(self) -> socket.socket:
        try:
            return super().open()
        except OSError as error:
            code = error.errno or 0
            raise ApplyError(
                STEP, f"cannot open a netfilter netlink socket: {error.strerror or error}", Kind.of_errno(code)
            ) from None


def make_room(sock: socket.socket, size: int) -> None:
    """Let the socket send a datagram of `size` bytes, or say why it cannot.

    A batch is one datagram, which must fit the send buffer: 10,000 elements take ~330 KB
    where the default buffer is 208 KB. Past net.core.wmem_max only SO_SNDBUFFORCE raises it,
    which takes CAP_NET_ADMIN (the router has it: nftables needs it too). The kernel doubles
    what it is given and keeps 32 bytes of it for itself."""
    wanted = size + 4096
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= wanted:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, wanted)
        return
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, wanted)
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    if granted < wanted:
        raise ApplyError(
            STEP,
            f"the nftables batch is {size} bytes, more than this socket may send ({granted} bytes, "
            "net.core.wmem_max); raising it takes SO_SNDBUFFORCE, which was refused: the router needs "
            "the NET_ADMIN capability",
            Kind.NOT_PERMITTED,
        )


def _answers(
    sock: socket.socket, expected: set[int], begin: int, meaning: dict[int, str]
) -> tuple[list[tuple[int, str]], bool]:
    """Read the kernel's answer to every message of the batch (each asked for an ack): the
    refusals (errno and words), and whether every answer came. A batch refused whole (no
    permission, a failed commit) is answered on its first message, which ends the wait."""
    failures: list[tuple[int, str]] = []
    while expected:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            failures.append((errno.ETIMEDOUT, f"the kernel did not answer the nftables batch within {ANSWER_TIMEOUT:g} s"))
            return failures, False
        except OSError as error:  # ENOBUFS: answers were lost; the batch's fate is unknown
            failures.append((error.errno or 0, f"reading the kernel's answers failed: {error.strerror or error}"))
            return failures, False
        for kind, flags, sequence, start, end in netlink.messages(data):
            if kind == NLMSG_ERROR and sequence in meaning:
                expected.discard(sequence)
                code, message = netlink.error_of(data, start, end, flags)
                if code:
                    failures.append((code, netlink.explain(code, meaning[sequence], message)))
                    if sequence == begin:
                        expected.clear()
    return failures, True
