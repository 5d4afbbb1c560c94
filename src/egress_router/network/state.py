"""The network side as data: what the router owns of its namespace, and the steps between two
states of it. Pure.

The router owns, in its pod's namespace:
- the egress link's administrative state and its addresses;
- every route of its own routing table (`schema.ROUTE_TABLE`), and any route of the main table
  through the egress interface (there should be none: the source address is added with
  `noprefixroute`, so that the pod's own routing, its eth0 default route included, stays whole);
- the policy rules at its priorities or pointing at its table;
- the sysctls the plan names.

`NetState` is that much of a namespace, as read (`NetBackend.read`) or as wanted (`desired`).
`converge(current, wanted)` gives the steps from one to the other; the same function takes a
namespace to its plan and, after a failure part-way, back to the state read before: one idea
of "this route is there", for applying, rolling back and drift checking alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from ipaddress import IPv6Interface
from typing import NamedTuple

from ..errors import ApplyError, Kind
from ..model import IPInterface

# The metric the kernel gives a route added without one; routes are always sent with theirs,
# so that what is read back compares equal to what was planned.
KERNEL_METRIC = {4: 0, 6: 1024}
MAIN_TABLE = 254


class LinkState(NamedTuple):
    name: str
    up: bool  # administratively up
    carrier: bool  # the lower layer is up too
    mac: str
    mtu: int


class Address(NamedTuple):
    """An address of the egress link. `noprefixroute`: the kernel adds no subnet route for it to
    the main table (the router puts the subnet in its own table instead)."""

    address: IPInterface
    noprefixroute: bool = True

    def __str__(self) -> str:
        return f"{self.address}" + (" noprefixroute" if self.noprefixroute else "")


class Route(NamedTuple):
    """A unicast route. The kernel finds a route by (family, table, destination, metric);
    two routes are the same when every field is."""

    family: int
    table: int
    destination: str  # "default" or an address with its prefix length
    via: str | None
    dev: str | None
    scope: str  # "global", "link" or "host"
    metric: int
    source: str | None = None  # the preferred source address of locally made packets

    @property
    def identity(self) -> tuple[int, int, str, int]:
        return (self.family, self.table, self.destination, self.metric)

    def __str__(self) -> str:
        via = f" via {self.via}" if self.via else ""
        dev = f" dev {self.dev}" if self.dev else ""
        scope = f" scope {self.scope}" if self.scope != "global" else ""
        source = f" src {self.source}" if self.source else ""
        table = "" if self.table == MAIN_TABLE else f" table {self.table}"
        metric = f" metric {self.metric}" if self.metric != KERNEL_METRIC[self.family] else ""
        return f"{self.destination}{via}{dev}{scope}{source}{table}{metric}"


class Rule(NamedTuple):
    """A policy routing rule: packets that match go to `table`."""

    family: int
    priority: int
    table: int
    fwmark: int | None = None
    iif: str | None = None  # "lo" for packets this host makes
    destination: str | None = None  # an address with its prefix length
    source: str | None = None  # likewise

    def __str__(self) -> str:
        match = ""
        if self.source:
            match += f" from {self.source}"
        if self.destination:
            match += f" to {self.destination}"
        if self.fwmark is not None:
            match += f" fwmark {self.fwmark:#x}"
        if self.iif:
            match += f" iif {self.iif}"
        table = "main" if self.table == MAIN_TABLE else str(self.table)
        return f"priority {self.priority}{match} lookup {table}"


class Sysctl(NamedTuple):
    key: str  # as under /proc/sys: "net/ipv4/ip_forward"
    value: str

    def __str__(self) -> str:
        return f"{self.key.replace('/', '.')}={self.value}"


class Scope(NamedTuple):
    """Which part of the namespace a read covers: the egress link (its addresses; the routes
    of the router's table and those of the main table through the link; the rules at the
    router's priorities or to its table, of both families) and `sysctls`; the pod interface
    only for its MTU."""

    interface: str
    pod_interface: str
    sysctls: tuple[str, ...] = ()


class NetState(NamedTuple):
    """The part of a namespace the router owns (see the module's docstring). `link` is None when
    the egress interface does not exist."""

    link: LinkState | None
    addresses: tuple[Address, ...] = ()
    routes: tuple[Route, ...] = ()
    rules: tuple[Rule, ...] = ()
    sysctls: tuple[tuple[str, str | None], ...] = ()  # None: not readable (no such key)
    pod_mtu: int | None = None  # the pod interface's, read along (for MSS clamping)
    pod_addresses: tuple[IPInterface, ...] = ()  # likewise (the proxy modes' replies)

    @property
    def up(self) -> bool:
        return self.link is not None and self.link.up

    def ips(self) -> tuple[IPInterface, ...]:
        return tuple(a.address for a in self.addresses)

    def route_via(self, table: int, family: int) -> str | None:
        """The gateway of the default route of `family` in `table`, if there is one."""
        for route in self.routes:
            if route.table == table and route.family == family and route.destination == "default":
                return route.via
        return None


# --- steps -------------------------------------------------------------------------------------
# Each is one change, one netlink message for the real adapter. `str()` is the line `ip` (or
# `sysctl`) would take for it: what `egress-router plan` shows, and what an error names
# ("failed to <step>: <the kernel's words>").


class LinkUp(NamedTuple):
    dev: str

    def __str__(self) -> str:
        return f"link set dev {self.dev} up"


class LinkDown(NamedTuple):
    dev: str

    def __str__(self) -> str:
        return f"link set dev {self.dev} down"


class AddAddress(NamedTuple):
    dev: str
    address: Address

    def __str__(self) -> str:
        nodad = " nodad" if self.address.address.version == 6 else ""
        return f"address add {self.address} dev {self.dev}{nodad}"


class DelAddress(NamedTuple):
    dev: str
    address: Address

    def __str__(self) -> str:
        return f"address del {self.address.address} dev {self.dev}"


class ReplaceRoute(NamedTuple):
    route: Route

    def __str__(self) -> str:
        return f"{_family(self.route.family)}route replace {self.route}"


class DelRoute(NamedTuple):
    route: Route

    def __str__(self) -> str:
        return f"{_family(self.route.family)}route del {self.route}"


class AddRule(NamedTuple):
    rule: Rule

    def __str__(self) -> str:
        return f"{_family(self.rule.family)}rule add {self.rule}"


class DelRule(NamedTuple):
    rule: Rule

    def __str__(self) -> str:
        return f"{_family(self.rule.family)}rule del {self.rule}"


class SetSysctl(NamedTuple):
    sysctl: Sysctl

    def __str__(self) -> str:
        return f"sysctl {self.sysctl}"


Step = LinkUp | LinkDown | AddAddress | DelAddress | ReplaceRoute | DelRoute | AddRule | DelRule | SetSysctl


def _family(family: int) -> str:
    return "-6 " if family == 6 else ""


def removes(step: Step) -> bool:
    """A step that takes something away: undoing a failed change may find it gone already."""
    return isinstance(step, (LinkDown, DelAddress, DelRoute, DelRule))


def take_steps(steps: Sequence[Step], take: Callable[[Step], None], keep_going: bool) -> None:
    """Run `take` (which raises `ApplyError` naming the step) on each step, as every adapter
    does: stop at the first refusal; or, with `keep_going` (putting a state back), try every
    step, count a removal of what is already gone as done, and name every other refusal."""
    failures = []
    for step in steps:
        try:
            take(step)
        except ApplyError as error:
            if not keep_going:
                raise
            if not (removes(step) and error.kind is Kind.NOT_FOUND):
                failures.append(f"{step}: {error.detail}")
    if failures:
        raise ApplyError("restore the previous network setup", "; ".join(failures))


# --- from one state to another -----------------------------------------------------------------


def converge(current: NetState, wanted: NetState) -> list[Step]:
    """The steps that take `current` to `wanted`, in an order the kernel accepts: nothing when
    they are equal. Routes are replaced in place (never deleted first), so a route that only
    changes never goes missing in between."""
    if current.link is None or wanted.link is None:
        return []
    dev = current.link.name
    steps: list[Step] = []
    went_down = current.up and not wanted.up
    if went_down:
        steps.append(LinkDown(dev))
    wanted_routes = {r.identity for r in wanted.routes}
    steps += [DelRule(r) for r in current.rules if r not in wanted.rules]
    steps += [DelRoute(r) for r in current.routes if r.identity not in wanted_routes]
    have = {a.address: a for a in current.addresses}
    want = {a.address: a for a in wanted.addresses}
    # An address is replaced by deleting it first: the kernel does not change the flags of an
    # address it has (noprefixroute among them) on a replace.
    redo = [a for ip, a in have.items() if ip in want and want[ip] != a]
    # (A link going down takes its IPv6 addresses with it.)
    steps += [
        DelAddress(dev, a)
        for ip, a in have.items()
        if (ip not in want or a in redo) and not (went_down and isinstance(ip, IPv6Interface))
    ]
    if wanted.up and not current.up:
        steps.append(LinkUp(dev))
    # Taking a link down drops its IPv6 addresses; deleting an address drops the routes that
    # name it as their source: both must be put back, though they were there when read.
    lost = {a.address for a in redo}
    if went_down:
        lost |= {ip for ip in have if isinstance(ip, IPv6Interface)}
    for ip, address in want.items():
        if ip not in have or ip in lost:
            steps.append(AddAddress(dev, address))
    lost_sources = {str(ip.ip) for ip in lost}
    # The kernel itself adds the subnet route of an address added without noprefixroute.
    added = [a for ip, a in want.items() if ip not in have or ip in lost]
    kernel_adds = {prefix_route(a, dev) for a in added}
    missing = [
        r for r in wanted.routes
        if (r not in current.routes or r.source in lost_sources) and r not in kernel_adds
    ]
    # Routes without a gateway first: they may be what makes a gateway reachable.
    steps += [ReplaceRoute(r) for r in sorted(missing, key=lambda r: r.via is not None)]
    steps += [AddRule(r) for r in wanted.rules if r not in current.rules]
    values = dict(current.sysctls)
    steps += [SetSysctl(Sysctl(k, v)) for k, v in wanted.sysctls if v is not None and values.get(k) != v]
    return steps


def prefix_route(address: Address, dev: str) -> Route | None:
    """The main-table route the kernel adds for an address without noprefixroute."""
    ip = address.address
    if address.noprefixroute or ip.network.prefixlen == ip.max_prefixlen:
        return None
    if ip.version == 4:
        return Route(4, MAIN_TABLE, str(ip.network), None, dev, "link", 0, str(ip.ip))
    return Route(6, MAIN_TABLE, str(ip.network), None, dev, "global", 256, None)


def canonical(state: NetState) -> NetState:
    """The state with its addresses, routes and rules in one order, so that two reads (or a
    read and a plan) of the same state compare equal however the kernel listed them."""
    return state._replace(
        addresses=tuple(sorted(state.addresses, key=lambda a: (a.address.version, str(a.address)))),
        routes=tuple(sorted(state.routes, key=_route_order)),
        rules=tuple(sorted(state.rules, key=lambda r: (r.family, r.priority, str(r)))),
    )


def _route_order(route: Route) -> tuple[int, int, bool, str, str]:
    # Within a table, routes without a gateway first: they may be what makes a gateway
    # reachable, so they are also the ones to put in first.
    return (route.table, route.family, route.via is not None, route.destination, str(route))


def differences(current: NetState, wanted: NetState) -> list[str]:
    """What differs, in words, for the drift check's log line."""
    if current.link is None:
        return ["the egress interface is missing"]
    return [_drift_words(step) for step in converge(current, wanted)]


def _drift_words(step: Step) -> str:
    if isinstance(step, LinkUp):
        return f"interface {step.dev} is down"
    if isinstance(step, AddAddress):
        return f"address {step.address.address} is missing or altered"
    if isinstance(step, DelAddress):
        return f"address {step.address.address} is not the router's"
    if isinstance(step, ReplaceRoute):
        return f"route {step.route} is missing or altered"
    if isinstance(step, DelRoute):
        return f"route {step.route} is not the router's"
    if isinstance(step, AddRule):
        return f"rule {step.rule} is missing"
    if isinstance(step, DelRule):
        return f"rule {step.rule} is not the router's"
    if isinstance(step, SetSysctl):
        return f"{step.sysctl.key.replace('/', '.')} is not {step.sysctl.value}"
    return str(step)
