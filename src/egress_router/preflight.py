"""Checks made before anything is changed, and warnings about the host's limits.

The router needs CAP_NET_ADMIN (nftables, addresses, routes, sysctls of its namespace) and
CAP_NET_RAW (neighbour announcements and probes) and nothing else: no `privileged: true`.
Reading the capability sets from /proc costs microseconds, and a missing one is then named
plainly instead of surfacing as an "Operation not permitted" from deep inside nft or ip.
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import SetupError

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
REQUIRED = {CAP_NET_ADMIN: "NET_ADMIN", CAP_NET_RAW: "NET_RAW"}


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def effective_capabilities(read: Callable[[str], str | None] = _read) -> int | None:
    status = read("/proc/self/status")
    if status is None:
        return None
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return None


def check_capabilities(read: Callable[[str], str | None] = _read) -> None:
    """Raise `SetupError` naming every capability the router lacks."""
    caps = effective_capabilities(read)
    if caps is None:
        return  # not Linux /proc: let the tools speak for themselves
    missing = [name for bit, name in REQUIRED.items() if not caps & (1 << bit)]
    if missing:
        names = " and ".join(missing)
        raise SetupError(
            f"missing capability {names}",
            f"add it to the container: securityContext.capabilities.add: [{', '.join(missing)}]"
            " (privileged: true is not needed)",
        )


def conntrack_warning(expected: int, read: Callable[[str], str | None] = _read) -> str | None:
    """A warning when the kernel cannot track `expected` connections at once, else None."""
    text = read("/proc/sys/net/netfilter/nf_conntrack_max")
    if text is None or not text.strip().isdigit():
        return None
    limit = int(text)
    if limit >= expected:
        return None
    return (
        f"net.netfilter.nf_conntrack_max is {limit}, below the {expected} connections expected: "
        "new connections will be dropped when the table is full; raise it on the node "
        "(or lower EGRESS_ROUTER_EXPECTED_CONNECTIONS)"
    )
