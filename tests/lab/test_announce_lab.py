"""The packet-socket announcer on a real LAN: in the router's own process, with another thread
holding a lock (the daemon's HTTP thread, say), it probes and announces without a fork and
leaves no process behind."""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from collections.abc import Iterator

import pytest

from egress_router.lab import Lab
from egress_router.lab.netns import in_netns
from egress_router.neighbours.packet import PacketSocketAnnouncer

pytestmark = pytest.mark.lab

SOURCE = ipaddress.IPv4Address("192.0.2.99")
GATEWAY = ipaddress.IPv4Address("192.0.2.1")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as built:
        yield built


def _children() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                pids.append(int(entry))
    return pids


def test_probes_and_announces_in_process_without_a_fork(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    lab.reset_router()
    lab.exec("router", ["ip", "link", "set", "macvlan0", "up"])
    mac = lab.mac("router", "macvlan0")

    def no_fork() -> int:
        raise AssertionError("the announcer forked")

    monkeypatch.setattr(os, "fork", no_fork)
    held, release = threading.Lock(), threading.Event()
    holder = threading.Thread(target=lambda: (held.acquire(), release.wait(10), held.release()))
    holder.start()
    try:
        report = in_netns(
            lab.ns("router"),
            lambda: PacketSocketAnnouncer().exchange("macvlan0", mac, [SOURCE], [(SOURCE, GATEWAY)]),
        )
    finally:
        release.set()
        holder.join()
    assert report.answered == ("192.0.2.1",) and report.conflicts == ()
    # The `true` that took the socket's last reference exits and is reaped.
    deadline = time.monotonic() + 5
    while _children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _children() == []
