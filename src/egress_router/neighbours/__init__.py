"""Neighbour announcements and probes on the LAN, for IPv4 (ARP) and IPv6 (neighbour discovery).

When a router pod is replaced, the LAN's gateway still maps the reserved address to the old
pod's MAC address until its neighbour entry expires. One announcement from the new owner makes
it switch at once. Before announcing, the router asks whether another host still answers for
its source address (the old pod, going away, or a real conflict) and whether the gateway
answers at all. The frames (`frames`) go out on one packet socket (CAP_NET_RAW): no arping or
ndisc6 process, and a healthy start waits only for the gateway's answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, Protocol

from ..model import IPAddress


class NeighbourReport(NamedTuple):
    """What the LAN answered to one probe."""

    answered: tuple[str, ...] = ()  # the gateways that answered
    conflicts: tuple[tuple[str, str], ...] = ()  # (address, MAC) of other hosts claiming a source


Probe = tuple[IPAddress, IPAddress]  # (source, gateway) of one family


class Announcer(Protocol):
    def exchange(
        self,
        interface: str,
        mac: str,
        addresses: Iterable[IPAddress],
        probes: Iterable[Probe] = (),
        timeout: float = 0.5,
    ) -> NeighbourReport:
        """For each (source, gateway) in `probes`, ask who holds the source and where the
        gateway is; then tell the LAN that `addresses` are at `mac`. Raises OSError when it
        cannot send; returns what the probes found."""
