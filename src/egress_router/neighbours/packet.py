"""Neighbour announcements and probes on a packet socket (CAP_NET_RAW), in a child process."""

from __future__ import annotations

import _thread
import os
import select
import socket
import struct
import time
from array import array
from collections.abc import Iterable

from ..model import IPAddress
from . import NeighbourReport, Probe
from . import frames as F

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26


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
        probes: Iterable[Probe] = (),
        timeout: float = 0.5,
    ) -> NeighbourReport:
        args = (interface, mac, list(addresses), list(probes), timeout)
        read_end, write_end = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(read_end)
            os.close(write_end)
            try:
                return _exchange(*args)
            finally:
                while _keep:
                    _keep.pop().close()
        if pid == 0:  # the child: never returns
            os.close(read_end)
            # Whoever waits for the router's output must not wait for this child's exit.
            os.closerange(0, 3)
            _child(write_end, args)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            answer = pipe.read()
        # Reaped on the side, so that a long-running router leaves no zombie behind, by a bare
        # `_thread` thread: nothing waits for it at exit, and `threading` is not imported for it.
        _thread.start_new_thread(_reap, (pid,))
        return decode(answer)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _child(write_end: int, args: tuple[str, str, list[IPAddress], list[Probe], float]) -> None:
    code = 0
    try:
        message = encode(_exchange(*args))
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


def encode(report: NeighbourReport) -> bytes:
    """The report as one line through the pipe: answered gateways, then address=MAC pairs."""
    conflicts = ",".join(f"{address}={mac}" for address, mac in report.conflicts)
    return f"{','.join(report.answered)} {conflicts}".encode()


def decode(answer: bytes) -> NeighbourReport:
    if answer.startswith(b"!"):
        raise OSError(answer[1:].decode(errors="replace"))
    if not answer:
        raise OSError("the announcing process ended without an answer")
    answered, _, conflicts = answer.decode().partition(" ")
    pairs = tuple(tuple(c.split("=", 1)) for c in conflicts.split(",") if "=" in c)
    return NeighbourReport(tuple(a for a in answered.split(",") if a), pairs)  # type: ignore[arg-type]


def _exchange(
    interface: str, mac: str, addresses: list[IPAddress], probes: list[Probe], timeout: float
) -> NeighbourReport:
    """Probe and announce; the socket is left open on purpose: the caller's process exit
    closes it (see `PacketSocketAnnouncer`)."""
    raw_mac = bytes.fromhex(mac.replace(":", ""))
    # Protocol 0 at creation: no frame is queued before the filter is in place at bind time.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    _keep.append(sock)
    report = NeighbourReport()
    if probes:
        _attach(sock, F.NEIGHBOUR_FILTER)
        sock.bind((interface, ETH_P_ALL))
        report = _probe(sock, raw_mac, probes, timeout)
    else:
        sock.bind((interface, 0))
    for address in addresses:
        if address.version == 4:
            for frame in F.arp_announcement(raw_mac, address.packed):
                sock.send(frame)
        else:
            sock.send(F.neighbour_advertisement(raw_mac, address.packed))
    return report


# Sockets of `_exchange`, closed by the exit of the (child) process that made them.
_keep: list[socket.socket] = []


def _attach(sock: socket.socket, program: tuple[tuple[int, int, int, int], ...]) -> None:
    code = array("B", b"".join(struct.pack("HBBI", *op) for op in program))
    address, _ = code.buffer_info()
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HL", len(program), address))
    _keep_alive.append(code)


_keep_alive: list[array[int]] = []  # the filter's bytes must outlive the setsockopt call


def _probe(sock: socket.socket, mac: bytes, probes: list[Probe], timeout: float) -> NeighbourReport:
    sources = [source.packed for source, _ in probes]
    gateways = {gateway.packed: str(gateway) for _, gateway in probes}
    for source, gateway in probes:
        if source.version == 4:
            sock.send(F.arp_probe(mac, source.packed))
            # With our source as sender: the gateway answers a request to the asker.
            sock.send(F.arp(1, mac, source.packed, F.NO_MAC, gateway.packed))
        else:
            sock.send(F.neighbour_probe(mac, source.packed))
            sock.send(F.neighbour_probe(mac, gateway.packed))
    # Stop as soon as every gateway has answered: a host that holds our address answers the
    # probe about as fast, and a healthy start must not wait out the timeout.
    received: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        answered, conflicts = F.read_answers(received, mac, sources, gateways)
        left = deadline - time.monotonic()
        if len(answered) == len(gateways) or left <= 0 or not select.select([sock], [], [], left)[0]:
            break
        received.append(sock.recv(256))
    return NeighbourReport(
        tuple(gateways[g] for g in gateways if g in answered),
        tuple(sorted((_address_text(a), F.mac_text(m)) for a, m in conflicts)),
    )


def _address_text(packed: bytes) -> str:
    family = socket.AF_INET if len(packed) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, packed)
