"""The names of the router's one nftables table and of what lives in it. Pure data.

Everything that reads or writes the table (the plan, the element writer, the listing reader,
metrics, status, the lab) names its parts through these, so that the table's layout is stated
once.
"""

from __future__ import annotations

TABLE_FAMILY = "inet"
TABLE_NAME = "egress_router"
TABLE_REF = f"{TABLE_FAMILY} {TABLE_NAME}"
FAMILIES = (4, 6)
PROTOCOLS = ("tcp", "udp", "sctp")


def map_name(protocol: str, family: int) -> str:
    """The NAT map of one protocol and family: local port -> address . remote port."""
    return f"{protocol}{family}"


def fallback_counter_name(family: int) -> str:
    return f"fallback{family}"


def bytes_set_name(protocol: str, family: int) -> str:
    """A set that traffic fills: one element per local port, counting bytes both ways."""
    return f"bytes_{protocol}{family}"


def connections_set_name(protocol: str, family: int) -> str:
    """A set that traffic fills: one element per local port, counting new connections."""
    return f"conns_{protocol}{family}"
