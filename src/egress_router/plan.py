"""Validated config -> desired state: the network setup and the one nftables table. Pure.

The table's chains are static: they only change when the source, the interfaces, the fallback or
the HTTP port change. Everything a destination line says lives in six maps (protocol x family),
keyed by local port, so that a new connection costs one map lookup however many rules there
are (the layout kube-proxy's nftables mode uses), and so that a changed rule is a changed map
element, not a rebuilt table.
"""

from __future__ import annotations

from typing import NamedTuple

from .model import IPAddress, IPInterface, RouterConfig
from .nft.table import Element, MapSpec, TableSpec
from .schema import (
    FAMILIES,
    PROTOCOLS,
    TABLE_FAMILY,
    TABLE_NAME,
    bytes_set_name,
    connections_set_name,
    fallback_counter_name,
    map_name,
)

MAX_PORTS = 65536
_NFT_FAMILY = {4: "ip", 6: "ip6"}


class Route(NamedTuple):
    destination: str  # "default" or an address with prefix length
    via: IPAddress | None
    family: int


class NetworkPlan(NamedTuple):
    """What the egress interface and the namespace's routing must look like."""

    interface: str
    addresses: tuple[IPInterface, ...]
    routes: tuple[Route, ...]
    sysctls: tuple[tuple[str, str], ...]


class Plan(NamedTuple):
    network: NetworkPlan
    table: TableSpec | None  # None in the proxy modes, which set up the network only


def build_plan(config: RouterConfig) -> Plan:
    table = build_table(config) if config.mode.redirects else None
    return Plan(build_network(config), table)


def build_network(config: RouterConfig) -> NetworkPlan:
    routes: list[Route] = []
    sysctls: list[tuple[str, str]] = []
    for source in config.sources:
        family = source.version
        gateway = config.gateway(family)
        assert gateway is not None  # config guarantees one gateway per source family
        # Without a prefix the address is a /32 (or /128): the gateway is then reachable only
        # through this host route. With a prefix the route is redundant but harmless.
        routes.append(Route(f"{gateway}/{gateway.max_prefixlen}", None, family))
        routes.append(Route("default", gateway, family))
        if family == 4:
            sysctls.append(("net/ipv4/ip_forward", "1"))
        else:
            sysctls.append(("net/ipv6/conf/all/forwarding", "1"))
    return NetworkPlan(config.egress_interface, config.sources, tuple(routes), tuple(sysctls))


def build_table(config: RouterConfig) -> TableSpec:
    return TableSpec(
        family=TABLE_FAMILY,
        name=TABLE_NAME,
        maps=_maps(config),
        body=_body(config),
        comment="managed by egress-router; do not edit",
    )


def _maps(config: RouterConfig) -> tuple[MapSpec, ...]:
    elements: dict[tuple[str, int], dict[int, Element]] = {
        (p, f): {} for p in PROTOCOLS for f in FAMILIES
    }
    # The hot loop of a large rule set. str() of an address, its hash and its version are all
    # Python-level and slow, and rules share few addresses: each address object (the parser
    # hands out one per distinct address) is looked up by identity, once.
    seen: dict[int, tuple[str, int]] = {}
    new = tuple.__new__  # a named tuple made without its Python-level __new__: 3 ms less at 10,000
    for port, protocol, address, remote_port, _ in config.destinations.mappings:
        known = seen.get(id(address))
        if known is None:
            known = seen[id(address)] = (str(address), address.version)
        elements[protocol, known[1]][port] = new(Element, (port, known[0], remote_port))
    return tuple(
        MapSpec(
            name=map_name(p, f),
            family=f,
            elements=elements[p, f],
            size=map_size(len(elements[p, f])),
        )
        for p in PROTOCOLS
        for f in FAMILIES
    )


def map_size(count: int) -> int:
    """A map's declared size: room for twice its elements, in powers of two from 1024 to every
    port. With a size, the kernel keeps the map in a fixed-size hash, which it fills about
    three times faster than the resizing one (3 ms against 10 ms for 10,000 elements), for a
    little memory (about 1 MB at 10,000 elements, 24 kB at 1024). A reload that needs more
    room changes the declaration, so the table is replaced whole, in one transaction."""
    size = 1024
    while size < 2 * count and size < MAX_PORTS:
        size *= 2
    return size


def _body(config: RouterConfig) -> str:
    """Counters and chains: everything of the table but the map elements."""
    pod = _quote(config.pod_interface)
    egress = _quote(config.egress_interface)
    http = config.served_http_port
    lines: list[str] = []
    for family in FAMILIES:
        lines.append(f"counter {fallback_counter_name(family)} {{ }}")
    # Connections and bytes per local port, counted on the forward path in sets that fill
    # themselves from traffic (one element per port that carried any): loading or changing the
    # rules never writes them, and the NAT maps carry no counters (which cost nft ~15% more load time).
    for family in FAMILIES:
        for protocol in PROTOCOLS:
            for name in (connections_set_name(protocol, family), bytes_set_name(protocol, family)):
                lines += [f"set {name} {{", "\ttype inet_service", "\tflags dynamic", "\tcounter", "\tsize 65536", "}"]

    # Only connections that come in from the pod network and are addressed to the router
    # itself are redirected: a host that uses the pod as its gateway gets nothing from it.
    pre = [f"iifname != {pod} return", "fib daddr type != local return"]
    if http:
        pre.append(f"tcp dport {http} return")
    for family in FAMILIES:
        for protocol in PROTOCOLS:
            pre.append(
                f"dnat {_NFT_FAMILY[family]} to {protocol} dport map @{map_name(protocol, family)}"
            )
    for family in FAMILIES:
        fallback = config.destinations.fallback(family)
        if fallback is not None:
            # As in the OpenShift image the fallback takes every protocol, the port unchanged.
            pre.append(
                f"meta nfproto {_nfproto(family)} counter name {fallback_counter_name(family)} "
                f"dnat {_NFT_FAMILY[family]} to {fallback}"
            )

    post = [
        f"oifname {egress} meta nfproto {_nfproto(s.version)} snat {_NFT_FAMILY[s.version]} to {s.ip}"
        for s in config.sources
    ]

    # Nothing listens for the LAN: the health and metrics port (which lists every
    # destination) and anything else the pod may run are not offered on the trusted address.
    # From the pod network, without a fallback, a connection to a port that no rule names is
    # refused at once rather than left to time out; the router's own HTTP port stays open.
    inp = [
        f"iifname {egress} ct state new meta l4proto {{ tcp, udp, sctp }} drop",
        f"iifname != {pod} return",
        "ct state != new return",
    ]
    if http:
        inp.append(f"tcp dport {http} return")
    inp += [
        "meta l4proto tcp reject with tcp reset",
        "meta l4proto { udp, sctp } reject",
    ]

    # Forward only what a rule redirected, and the replies to it: neither side can use the
    # router as a plain gateway, from the pod network out or from the LAN in.
    fwd = [
        "ct status dnat jump count",
        "ct state established,related accept",
        f"iifname {pod} oifname {egress} ct status dnat accept",
    ]

    lines += _chain("prerouting", "nat", "prerouting", "dstnat", "accept", pre)
    lines += _chain("postrouting", "nat", "postrouting", "srcnat", "accept", post)
    lines += _chain("input", "filter", "input", "filter", "accept", inp)
    lines += _chain("forward", "filter", "forward", "filter", "drop", fwd)
    lines += ["chain count {", *(f"\t{rule}" for rule in _count_rules()), "}"]
    return "\n".join(lines)


def _count_rules() -> list[str]:
    """Every packet of a redirected connection, both ways, counted under the connection's
    original local port; the daemon attributes a port to its mapping, or to the fallback."""
    rules = []
    for family in FAMILIES:
        for protocol in PROTOCOLS:
            match = f"meta nfproto {_nfproto(family)} meta l4proto {protocol}"
            rules += [
                f"ct state new {match} update @{connections_set_name(protocol, family)} {{ ct original proto-dst }}",
                f"{match} update @{bytes_set_name(protocol, family)} {{ ct original proto-dst }}",
            ]
    return rules


def _chain(name: str, kind: str, hook: str, priority: str, policy: str, rules: list[str]) -> list[str]:
    head = f"\ttype {kind} hook {hook} priority {priority}; policy {policy};"
    return [f"chain {name} {{", head, *(f"\t{rule}" for rule in rules), "}"]


def _nfproto(family: int) -> str:
    return "ipv4" if family == 4 else "ipv6"


def _quote(name: str) -> str:
    return f'"{name}"'


def describe(config: RouterConfig) -> list[str]:
    """The plan in words, for `EGRESS_ROUTER_DEBUG` and `egress-router plan`."""
    out = []
    for s in config.sources:
        out.append(f"source {s} on {config.egress_interface} via gateway {config.gateway(s.version)}")
    for m in config.destinations.mappings:
        out.append(f"redirect {m.port}/{m.protocol} -> {m.address} port {m.remote_port}")
    for address in config.destinations.fallbacks:
        out.append(f"redirect any other port -> {address} (same port)")
    if config.mode.redirects and not config.destinations.fallbacks:
        out.append("refuse connections to any other port")
    if config.served_http_port:
        out.append(f"serve health and metrics on port {config.served_http_port}/tcp")
    return out
