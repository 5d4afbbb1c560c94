"""Neighbour announcements and probes on a packet socket (CAP_NET_RAW), in this process."""

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
    """Probe and announce on one packet socket, opened for the exchange and let go after it.

    Closing a packet socket makes the kernel wait out an RCU grace period (10-30 ms here), and
    so does a process exit that closes one: a third of a pod start. The socket's last reference
    is handed to a spawned `true`, whose exit pays the wait: the router drops its own copy
    without waiting, in init mode and in the daemon alike. `posix_spawn` runs no Python in the
    child (glibc's vfork-and-exec), so it is safe in the threaded daemon, where a fork is not:
    a forked child inherits whatever lock another thread held at the time.
    """

    def exchange(
        self,
        interface: str,
        mac: str,
        addresses: Iterable[IPAddress],
        probes: Iterable[Probe] = (),
        timeout: float = 0.5,
    ) -> NeighbourReport:
        # Protocol 0 at creation: no frame is queued before the filter is in place at bind time.
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            return _exchange(sock, interface, mac, list(addresses), list(probes), timeout)
        finally:
            _let_go(sock.detach())


def _let_go(fd: int) -> None:
    holder = _spawn_holder(fd)
    # Our copy is closed (and the holder reaped) by a bare `_thread` thread: should the holder
    # be gone already, that close is the last and waits, but not in the router's own path.
    # Nothing waits for the thread at exit, and `threading` is not imported for it.
    _thread.start_new_thread(_close_and_reap, (fd, holder))


def _spawn_holder(fd: int) -> int | None:
    """A `true` that holds the socket as its fd 3 (and nothing else: no stdout for whoever
    reads the router's to wait on), or None where none can be spawned."""
    try:
        return os.posix_spawnp(
            "true",
            ["true"],
            {},
            file_actions=[
                (os.POSIX_SPAWN_DUP2, fd, 4 if fd == 3 else 3),  # dup2 onto itself keeps CLOEXEC
                (os.POSIX_SPAWN_CLOSE, 0),
                (os.POSIX_SPAWN_CLOSE, 1),
                (os.POSIX_SPAWN_CLOSE, 2),
            ],
        )
    except OSError:
        return None


def _close_and_reap(fd: int, holder: int | None) -> None:
    os.close(fd)
    if holder is not None:
        try:
            os.waitpid(holder, 0)
        except ChildProcessError:
            pass


def _exchange(
    sock: socket.socket,
    interface: str,
    mac: str,
    addresses: list[IPAddress],
    probes: list[Probe],
    timeout: float,
) -> NeighbourReport:
    raw_mac = bytes.fromhex(mac.replace(":", ""))
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


def _attach(sock: socket.socket, program: tuple[tuple[int, int, int, int], ...]) -> None:
    code = array("B", b"".join(struct.pack("HBBI", *op) for op in program))
    address, _ = code.buffer_info()
    # The kernel copies the program in the call; `code` only has to live until it returns.
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HL", len(program), address))


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
