"""Validated config -> desired state: the network setup and the one nftables table. Pure.

The table's chains are static: they only change when the source, the interfaces, the fallback or
the HTTP port change. Everything a destination line says lives in six maps (protocol x family),
keyed by local port, so that a new connection costs one map lookup however many rules there
are (the layout kube-proxy's nftables mode uses), and so that a changed rule is a changed map
element, not a rebuilt table.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, NamedTuple

from .model import IPAddress, Name, RouterConfig
from .network.state import KERNEL_METRIC, MAIN_TABLE, Address, LinkState, NetState, Route, Rule, Scope, canonical
from .nft.table import Element, MapSpec, TableSpec

if TYPE_CHECKING:
    from .dns import Answers
    from .dns.chains import Named
from .schema import (
    FAMILIES,
    FWMARK,
    LOCAL_PRIORITY,
    NAMESERVER_PRIORITY,
    POD_SOURCE_PRIORITY,
    PROTOCOLS,
    RELAY_CT_MARK,
    ROUTE_TABLE,
    RULE_PRIORITY,
    TABLE_FAMILY,
    TABLE_NAME,
    bytes_set_name,
    connections_set_name,
    fallback_counter_name,
    map_name,
)

MAX_PORTS = 65536
_NFT_FAMILY = {4: "ip", 6: "ip6"}


class Facts(NamedTuple):
    """What the plan needs to know of the pod that the configuration does not say, read from
    the kernel and the pod's files by the caller."""

    pod_mtu: int = 1500  # the pod interface's
    egress_mtu: int = 1500
    nameservers: tuple[IPAddress, ...] = ()  # the pod's /etc/resolv.conf (the proxy modes)
    pod_addresses: tuple[IPAddress, ...] = ()  # the pod interface's (the proxy modes)
    # The egress interface's reverse-path check is strict (the kernel applies the larger of
    # its rp_filter and `all`'s): unknown counts as strict, as many nodes set it.
    strict_rp_filter: bool = True
    # Each name's current addresses and since when (`dns.Answer`), sorted by name.
    answers: Answers = ()

    @classmethod
    def of(cls, state: NetState, nameservers: tuple[IPAddress, ...] = ()) -> Facts:
        egress = state.link.mtu if state.link is not None and state.link.mtu else 1500
        values = dict(state.sysctls)
        device = next((v for k, v in state.sysctls if k.endswith("/rp_filter") and k != RP_FILTER_ALL), None)
        every = values.get(RP_FILTER_ALL)
        strict = device is None or every is None or max(int(device), int(every)) == 1
        return cls(state.pod_mtu or egress, egress, nameservers, tuple(a.ip for a in state.pod_addresses), strict)


DEFAULT_FACTS = Facts()  # a pod as most CNIs make it: 1500 bytes on both sides


class Probe(NamedTuple):
    """Ask the LAN, from `source`, where `gateway` is."""

    source: IPAddress
    gateway: IPAddress


class NetworkPlan(NamedTuple):
    """What the router's part of its namespace must look like (see `network.state`)."""

    scope: Scope
    addresses: tuple[Address, ...]
    routes: tuple[Route, ...]
    rules: tuple[Rule, ...]
    sysctls: tuple[tuple[str, str], ...]
    probes: tuple[Probe, ...]  # asked, and the sources announced, when the LAN may not know them

    @property
    def interface(self) -> str:
        return self.scope.interface

    def wanted(self, link: LinkState) -> NetState:
        """The state to converge to, for the link as it is (its name, MAC and MTU stay)."""
        sysctls = tuple((k, v) for k, v in self.sysctls)
        return canonical(NetState(link._replace(up=True), self.addresses, self.routes, self.rules, sysctls))

    def gateway(self, family: int) -> IPAddress | None:
        for probe in self.probes:
            if probe.gateway.version == family:
                return probe.gateway
        return None


class Plan(NamedTuple):
    network: NetworkPlan
    table: TableSpec


def build_plan(config: RouterConfig, facts: Facts = DEFAULT_FACTS) -> Plan:
    table = build_table(config, facts) if config.mode.redirects else build_proxy_table(config)
    return Plan(build_network(config, facts), table)


RP_FILTER_ALL = "net/ipv4/conf/all/rp_filter"


def network_scope(config: RouterConfig) -> Scope:
    """What of the namespace the router reads and owns, for this configuration (and the
    reverse-path setting of `all`, read for the plan, never written)."""
    keys = [k for k, _ in _forwarding(config)]
    if 4 in config.families:
        keys += [_rp_filter_key(config), RP_FILTER_ALL]
    return Scope(config.egress_interface, config.pod_interface, tuple(keys))


def _forwarding(config: RouterConfig) -> list[tuple[str, str]]:
    # Forwarding is switched on only where a rule redirects: the proxy modes forward nothing,
    # and the table's forward chain drops what no rule redirected.
    if not config.mode.redirects:
        return []
    return [("net/ipv4/ip_forward", "1") if f == 4 else ("net/ipv6/conf/all/forwarding", "1") for f in config.families]


def _rp_filter_key(config: RouterConfig) -> str:
    return f"net/ipv4/conf/{config.egress_interface}/rp_filter"


def _sysctls(config: RouterConfig, facts: Facts) -> list[tuple[str, str]]:
    values = _forwarding(config)
    if 4 in config.families and facts.strict_rp_filter:
        # Replies come in on the egress interface from addresses the main table routes through
        # the pod interface: a strict reverse-path check (rp_filter 1, which pod namespaces
        # inherit from many nodes) would drop them all. Loose mode (2) passes them, and still
        # drops sources that no route knows. Where the check is off or loose already it is
        # left so: loose mode would need a route back to every destination (a default route)
        # that some pods lack. IPv6 has no such check.
        values.append((_rp_filter_key(config), "2"))
    return values


def build_network(config: RouterConfig, facts: Facts = DEFAULT_FACTS) -> NetworkPlan:
    egress = config.egress_interface
    routes: list[Route] = []
    rules: list[Rule] = []
    probes: list[Probe] = []
    for source in config.sources:
        family = source.version
        gateway = config.gateway(family)
        assert gateway is not None  # config guarantees one gateway per source family
        probes.append(Probe(source.ip, gateway))
        metric = KERNEL_METRIC[family]
        src = str(source.ip)
        on_link = source.network.prefixlen < source.max_prefixlen and gateway in source.network
        if source.network.prefixlen < source.max_prefixlen:
            # The LAN's subnet, in the router's table only: a node or any other host of the LAN
            # that talks to the pod through its pod network is answered there, not here.
            routes.append(Route(family, ROUTE_TABLE, str(source.network), None, egress, _link_scope(family), metric, src))
        if not on_link and not gateway.is_link_local:
            # Without a prefix (or with one that does not hold the gateway) only this host
            # route makes the gateway reachable.
            host = f"{gateway}/{gateway.max_prefixlen}"
            routes.append(Route(family, ROUTE_TABLE, host, None, egress, _link_scope(family), metric, src))
        routes.append(Route(family, ROUTE_TABLE, "default", str(gateway), egress, "global", metric, src))
        rules += _rules(config, family, facts)
    return NetworkPlan(
        network_scope(config),
        tuple(Address(s) for s in config.sources),
        tuple(routes),
        tuple(rules),
        tuple(_sysctls(config, facts)),
        tuple(probes),
    )


def nameservers(resolv_conf: str) -> tuple[IPAddress, ...]:
    """The `nameserver` addresses of a resolv.conf text (zone indexes and junk skipped)."""
    found = []
    for line in resolv_conf.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                found.append(ipaddress.ip_address(fields[1]))
            except ValueError:
                continue
    return tuple(found)


def _link_scope(family: int) -> str:
    # The kernel keeps IPv6 routes in the universe scope whatever they are.
    return "link" if family == 4 else "global"


def _rules(config: RouterConfig, family: int, facts: Facts) -> list[Rule]:
    if config.mode.redirects:
        # Only the packets of connections the table redirected are marked: they alone leave
        # through the egress interface; replies, and the router's own traffic, follow the pod.
        return [Rule(family, RULE_PRIORITY, ROUTE_TABLE, fwmark=FWMARK)]
    # The proxy modes: the proxy's own connections leave through the egress interface, except
    # what the pod sends from its pod address (replies to the proxy's clients and to probes;
    # this rule also keeps the reverse-path check of what comes in on eth0, which looks up as
    # if the pod sent it, off the egress interface) and the pod's DNS lookups.
    rules = [
        Rule(family, POD_SOURCE_PRIORITY, MAIN_TABLE, source=f"{ip}/{ip.max_prefixlen}")
        for ip in facts.pod_addresses
        if ip.version == family
    ]
    for server in facts.nameservers:
        if server.version == family:
            rules.append(Rule(family, NAMESERVER_PRIORITY, MAIN_TABLE, destination=f"{server}/{server.max_prefixlen}"))
    rules.append(Rule(family, LOCAL_PRIORITY, ROUTE_TABLE, iif="lo"))
    return rules


COMMENT = "managed by egress-router; do not edit"


def build_table(config: RouterConfig, facts: Facts = DEFAULT_FACTS) -> TableSpec:
    maps, by_name = _maps(config)
    named = None
    if by_name or type(config.destinations.fallback(0)) is Name:
        from .dns.chains import named as named_part  # only a configuration with names

        fallback = config.destinations.fallback(0)
        named = named_part(by_name, fallback if type(fallback) is Name else None, config.families, dict(facts.answers))
    return TableSpec(
        family=TABLE_FAMILY,
        name=TABLE_NAME,
        maps=maps,
        body=_body(config, facts, named),
        comment=COMMENT,
        dynamic=() if named is None else named[0].dynamic,
    )


def build_proxy_table(config: RouterConfig) -> TableSpec:
    """The proxy modes' table: no redirection; nothing taken from the LAN, nothing forwarded."""
    egress = _quote(config.egress_interface)
    lines = [
        *_chain("input", "filter", "input", "filter", "accept",
                [f"iifname {egress} ct state new meta l4proto {{ tcp, udp, sctp }} drop"]),
        # The proxy modes forward nothing: the pod is no gateway, from either side.
        *_chain("forward", "filter", "forward", "filter", "drop", []),
    ]
    return TableSpec(TABLE_FAMILY, TABLE_NAME, (), "\n".join(lines), COMMENT)


def _maps(config: RouterConfig) -> tuple[tuple[MapSpec, ...], list[tuple[str, int, Name, int]]]:
    """The NAT maps, and the named rules (protocol, port, name, remote port), which are not in them."""
    elements: dict[tuple[str, int], dict[int, Element]] = {
        (p, f): {} for p in PROTOCOLS for f in (*FAMILIES, 0)  # 0: a name's
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
    by_name = [(p, port, Name(e.address), e.remote_port) for p in PROTOCOLS for port, e in elements.pop((p, 0)).items()]
    return tuple(
        MapSpec(
            name=map_name(p, f),
            family=f,
            elements=elements[p, f],
            size=map_size(len(elements[p, f])),
        )
        for p in PROTOCOLS
        for f in FAMILIES
    ), by_name


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


def _body(config: RouterConfig, facts: Facts, named: tuple[Named, dict[int, str]] | None = None) -> str:
    """Counters and chains: everything of the table but the map elements."""
    pod = _quote(config.pod_interface)
    egress = _quote(config.egress_interface)
    http = config.served_http_port
    lines: list[str] = []
    for family in FAMILIES:
        lines.append(f"counter {fallback_counter_name(family)} {{ }}")
    # Connections (in prerouting) and bytes (on the forward path) per local port, counted in sets
    # that fill themselves from traffic (one element per port that carried any): loading or
    # changing the rules never writes them, and the NAT maps carry no counters (which cost nft
    # ~15% more load time). Only where they are read (`legacy`): the updates cost about 1 µs of
    # a new connection.
    counting = config.counts_traffic
    for family in FAMILIES if counting else ():
        for protocol in PROTOCOLS:
            for name in (connections_set_name(protocol, family), bytes_set_name(protocol, family)):
                lines += [f"set {name} {{", "\ttype inet_service", "\tflags dynamic", "\tcounter", "\tsize 65536", "}"]

    # Only connections that come in from the pod network and are addressed to the router
    # itself are redirected: a host that uses the pod as its gateway gets nothing from it.
    pre = [f"iifname != {pod} return", "fib daddr type != local return"]
    if http:
        pre.append(f"tcp dport {http} return")
    # A NAT chain sees only a connection's first packet (a retransmitted SYN finds the NAT
    # binding made): counted here, a connection counts once, whatever is lost beyond the router.
    pre += [
        f"meta nfproto {_nfproto(family)} meta l4proto {protocol} update @{connections_set_name(protocol, family)} "
        f"{{ {protocol} dport }}"
        for family in (FAMILIES if counting else ())
        for protocol in PROTOCOLS
    ]
    for family in FAMILIES:
        for protocol in PROTOCOLS:
            pre.append(
                f"dnat {_NFT_FAMILY[family]} to {protocol} dport map @{map_name(protocol, family)}"
            )
    if named is not None:
        pre += named[0].prerouting  # named rules: a verdict map by port, to the name's chain
    for family in FAMILIES:
        fallback = config.destinations.fallback(family)
        if named is not None and family in named[1]:
            pre.append(f"meta nfproto {_nfproto(family)} counter name {fallback_counter_name(family)} goto {named[1][family]}")
        elif fallback is not None and type(fallback) is not Name:
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

    # The packets of a redirected connection, on their way out, carry the mark that routes
    # them through the egress interface (the rule `fwmark FWMARK lookup ROUTE_TABLE`); its
    # replies and everything else follow the pod's own routes. After DNAT, before routing.
    # A connection an HA standby relays to the active (RELAY_CT_MARK, ha/gate.py) stays on
    # the pod network, and is forwarded there.
    mark = [f"iifname {pod} ct direction original ct status dnat ct mark != {RELAY_CT_MARK:#x} meta mark set {FWMARK:#x}"]

    # Forward only what a rule redirected, and the replies to it: neither side can use the
    # router as a plain gateway, from the pod network out or from the LAN in.
    # First, clamp the MSS of both SYNs to what the narrower side carries: pod networks
    # (overlays) are often narrower than the LAN, `rt mtu` sees only the way out, and many
    # firewalls drop the ICMP that path MTU discovery needs.
    fwd = [
        f"meta nfproto {_nfproto(family)} ct status dnat tcp flags syn / syn,rst "
        f"tcp option maxseg size > {mss} tcp option maxseg size set {mss}"
        for family, mss in _mss(facts)
    ]
    fwd += ["ct status dnat jump count"] if counting else []
    fwd += [
        "ct state established,related accept",
        f"iifname {pod} oifname {egress} ct status dnat accept",
        f"iifname {pod} oifname {pod} ct status dnat ct mark {RELAY_CT_MARK:#x} accept",
    ]

    lines += _chain("prerouting", "nat", "prerouting", "dstnat", "accept", pre)
    lines += _chain("redirected", "filter", "prerouting", "dstnat + 10", "accept", mark)
    lines += _chain("postrouting", "nat", "postrouting", "srcnat", "accept", post)
    lines += _chain("input", "filter", "input", "filter", "accept", inp)
    lines += _chain("forward", "filter", "forward", "filter", "drop", fwd)
    if counting:
        lines += ["chain count {", *(f"\t{rule}" for rule in _count_rules()), "}"]
    if named is not None:
        lines += named[0].declarations
    return "\n".join(lines)


def _mss(facts: Facts) -> list[tuple[int, int]]:
    """(family, MSS) of the narrower of the two sides: its MTU less the IP and TCP headers."""
    mtu = min(facts.pod_mtu, facts.egress_mtu)
    return [(4, mtu - 40), (6, mtu - 60)]


def _count_rules() -> list[str]:
    """Every packet of a redirected connection, both ways, counted under the connection's
    original local port; the daemon attributes a port to its mapping, or to the fallback.
    (Its connections are counted in `prerouting`.)"""
    return [
        f"meta nfproto {_nfproto(family)} meta l4proto {protocol} update @{bytes_set_name(protocol, family)} "
        "{ ct original proto-dst }"
        for family in FAMILIES
        for protocol in PROTOCOLS
    ]


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
    if config.mode.redirects:
        out.append(
            f"redirected connections leave through {config.egress_interface} (mark {FWMARK:#x}, "
            f"table {ROUTE_TABLE}); everything else keeps the pod's own routes"
        )
    else:
        out.append(
            f"the pod's own connections leave through {config.egress_interface} (table {ROUTE_TABLE}); "
            f"replies to its clients and its DNS lookups keep the pod's own routes"
        )
    for m in config.destinations.mappings:
        out.append(f"redirect {m.port}/{m.protocol} -> {m.address} port {m.remote_port}")
    for address in config.destinations.fallbacks:
        out.append(f"redirect any other port -> {address} (same port)")
    if config.mode.redirects and not config.destinations.fallbacks:
        out.append("refuse connections to any other port")
    if config.served_http_port:
        out.append(f"serve health and metrics on port {config.served_http_port}/tcp")
    return out
