"""`NetBackend` in memory, for tests without root.

It runs the very steps the real adapter sends, and answers them as the kernel does, with the
side effects a rollback must cope with: an IPv4 address added without `noprefixroute` brings
its subnet route into the main table; deleting an address takes the routes that use it as
their source; taking a link down takes its routes and its IPv6 addresses; a route needs its
link up, a reachable gateway and a local source. Reads cover what `RtNetlink.read` covers.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import ApplyError, Kind
from ..schema import ROUTE_TABLE, RULE_PRIORITIES
from .state import (
    KERNEL_METRIC,
    MAIN_TABLE,
    AddAddress,
    Address,
    AddRule,
    DelAddress,
    DelRoute,
    LinkDown,
    LinkState,
    LinkUp,
    NetState,
    ReplaceRoute,
    Route,
    Rule,
    Scope,
    SetSysctl,
    Step,
    canonical,
    prefix_route,
    take_steps,
)


@dataclass
class FakeLink:
    up: bool = False
    mac: str = "02:00:00:00:00:01"
    mtu: int = 1500
    carrier: bool = True  # the parent is up
    addresses: list[Address] = field(default_factory=list)


class _Refused(Exception):
    def __init__(self, code: int, words: str = "") -> None:
        super().__init__(code, words)
        self.code, self.words = code, words


@dataclass
class FakeNet:
    links: dict[str, FakeLink] = field(default_factory=dict)
    routes: list[Route] = field(default_factory=list)  # every table's; the pod's own among them
    rules: list[Rule] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    read_only_sysctls: bool = False
    fail_on: str | None = None  # the first step whose text holds this is refused
    taken: list[Step] = field(default_factory=list)  # every step taken, in order

    # --- reading -----------------------------------------------------------------------------

    def read(self, scope: Scope) -> NetState:
        link = self.links.get(scope.interface)
        if link is None:
            return NetState(None)
        state = LinkState(scope.interface, link.up, link.up and link.carrier, link.mac, link.mtu)
        routes = tuple(r for r in self.routes if _owned(r, scope.interface))
        rules = tuple(r for r in self.rules if r.table == ROUTE_TABLE or r.priority in RULE_PRIORITIES)
        sysctls = tuple((k, self.sysctls.get(k)) for k in scope.sysctls)
        pod = self.links.get(scope.pod_interface)
        pod_addresses = tuple(a.address for a in pod.addresses) if pod else ()
        return canonical(NetState(state, tuple(link.addresses), routes, rules, sysctls, pod.mtu if pod else None, pod_addresses))

    def has_carrier(self, name: str) -> bool | None:
        link = self.links.get(name)
        return None if link is None else link.up and link.carrier

    # --- changing ----------------------------------------------------------------------------

    def apply(self, steps: Sequence[Step], keep_going: bool = False) -> None:
        take_steps(steps, self._take_one, keep_going)

    def _take_one(self, step: Step) -> None:
        try:
            self._take(step)
        except _Refused as refused:
            words = os.strerror(refused.code) + (f" ({refused.words})" if refused.words else "")
            raise ApplyError(str(step), words, Kind.of_errno(refused.code)) from None

    def _take(self, step: Step) -> None:
        if self.fail_on is not None and self.fail_on in str(step):
            self.fail_on = None
            raise _Refused(errno.EINVAL, "refused by the test")
        if isinstance(step, SetSysctl):
            key, value = step.sysctl
            if self.read_only_sysctls and self.sysctls.get(key) != value:
                raise _Refused(errno.EROFS)
            self.sysctls[key] = value
        elif isinstance(step, (LinkUp, LinkDown)):
            self._link_state(self._link(step.dev), step.dev, isinstance(step, LinkUp))
        elif isinstance(step, AddAddress):
            self._add_address(step.dev, step.address)
        elif isinstance(step, DelAddress):
            self._del_address(step.dev, step.address)
        elif isinstance(step, ReplaceRoute):
            self._replace_route(step.route)
        elif isinstance(step, DelRoute):
            found = [r for r in self.routes if r.identity == step.route.identity]
            if not found:
                raise _Refused(errno.ESRCH)
            self.routes.remove(found[0])
        elif isinstance(step, AddRule):
            if step.rule in self.rules:
                raise _Refused(errno.EEXIST)
            self.rules.append(step.rule)
        else:
            if step.rule not in self.rules:
                raise _Refused(errno.ENOENT)
            self.rules.remove(step.rule)
        self.taken.append(step)

    def _link(self, name: str) -> FakeLink:
        link = self.links.get(name)
        if link is None:
            raise _Refused(errno.ENODEV)
        return link

    def _link_state(self, link: FakeLink, name: str, up: bool) -> None:
        if up and not link.up:
            link.up = True
            for address in link.addresses:
                self._prefix_route(name, address)
        elif not up and link.up:
            link.up = False
            self.routes = [r for r in self.routes if r.dev != name]
            link.addresses = [a for a in link.addresses if a.address.version == 4]

    def _add_address(self, name: str, address: Address) -> None:
        link = self._link(name)
        for i, present in enumerate(link.addresses):
            if present.address == address.address:
                # A replace keeps the flags the address has (as the kernel does).
                link.addresses[i] = present
                return
        link.addresses.append(address)
        if link.up:
            self._prefix_route(name, address)

    def _prefix_route(self, name: str, address: Address) -> None:
        route = prefix_route(address, name)
        if route is not None and route not in self.routes:
            self.routes.append(route)

    def _del_address(self, name: str, address: Address) -> None:
        link = self._link(name)
        present = [a for a in link.addresses if a.address == address.address]
        if not present:
            raise _Refused(errno.EADDRNOTAVAIL)
        link.addresses.remove(present[0])
        ip = address.address
        self.routes = [
            r for r in self.routes
            if r.source != str(ip.ip) and not (r.dev == name and r.table == MAIN_TABLE and r.destination == str(ip.network))
        ]

    def _replace_route(self, route: Route) -> None:
        if route.dev is not None:
            link = self._link(route.dev)
            if not link.up:
                raise _Refused(errno.ENETDOWN)
            if route.source is not None and not any(str(a.address.ip) == route.source for a in link.addresses):
                raise _Refused(errno.EINVAL, "Invalid prefsrc address")
        if route.via is not None and not self._reachable(route):
            raise _Refused(errno.ENETUNREACH, "Nexthop has invalid gateway")
        self.routes = [r for r in self.routes if r.identity != route.identity]
        self.routes.append(route)

    def _reachable(self, route: Route) -> bool:
        gateway = ipaddress.ip_address(route.via or "")
        if gateway.is_link_local:
            return True
        for r in self.routes:
            if r.family != route.family or r.via is not None or r.dev != route.dev:
                continue
            if r.table in (route.table, MAIN_TABLE) and gateway in ipaddress.ip_network(r.destination, strict=False):
                return True
        return False


def _owned(route: Route, interface: str) -> bool:
    if route.table == ROUTE_TABLE:
        return True
    if route.table != MAIN_TABLE or route.dev != interface:
        return False
    return not (route.family == 6 and route.destination.startswith("fe80:"))


def pod_network(link: str = "eth0", gateway: str = "169.254.1.1") -> list[Route]:
    """The main-table routes a Calico-like CNI gives a pod: the router must leave them alone."""
    return [
        Route(4, MAIN_TABLE, f"{gateway}/32", None, link, "link", 0),
        Route(4, MAIN_TABLE, "default", gateway, link, "global", 0),
        Route(6, MAIN_TABLE, "default", "fe80::1", link, "global", KERNEL_METRIC[6]),
    ]
