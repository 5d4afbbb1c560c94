"""Links, addresses, routes and sysctls of the router's namespace.

`NetBackend` is the narrow interface the reconcile step needs. `RtNetlink` (`network.rtnl`)
speaks rtnetlink to the kernel itself (no `ip` process, and none of pyroute2's import time on
the start-up path); `FakeNet` keeps the same state in memory for tests.

What a reconcile changes is planned here as `Step`s: pure data, whose `command()` is the line
`ip -batch` would take for the same change (shown by `egress-router plan`, and in errors).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from ..model import IPInterface
from ..plan import NetworkPlan


class LinkState(NamedTuple):
    name: str
    up: bool  # administratively up
    carrier: bool  # the lower layer is up too
    mac: str
    mtu: int
    addresses: tuple[IPInterface, ...]  # global scope only: link-local ones are the kernel's


def batch_destination(destination: str, family: int) -> str:
    """A route's destination as an `ip -batch` line must name it: batch lines take no family
    option, and "default" alone would mean IPv4, so the default route is spelled as a prefix."""
    if destination != "default":
        return destination
    return "::/0" if family == 6 else "0.0.0.0/0"


class Step(NamedTuple):
    """One change to the link, an address or a route."""

    verb: str  # "link up", "link down", "address replace", "address del", "route replace", "route del"
    dev: str | None
    address: IPInterface | None = None  # address steps
    destination: str = ""  # route steps: "default", or an address with or without its prefix
    family: int = 4
    via: str | None = None
    scope: str | None = None  # a route's scope by name ("link", "host"); None: the kernel's
    nodad: bool = False  # an IPv6 address usable at once, without duplicate detection
    metric: int = 0  # a route's priority: of two routes to one destination, the lower wins

    @property
    def deletes(self) -> bool:
        return self.verb.endswith(" del")

    def command(self) -> str:
        dev = f" dev {self.dev}" if self.dev else ""
        if self.verb.startswith("link"):
            return f"link set{dev} {self.verb.split()[1]}"
        if self.verb.startswith("address"):
            return f"{self.verb} {self.address}{dev}" + (" nodad" if self.nodad else "")
        via = f" via {self.via}" if self.via else ""
        scope = f" scope {self.scope}" if self.scope and self.scope != "global" else ""
        metric = f" metric {self.metric}" if self.metric else ""
        return f"{self.verb} {self.destination}{via}{dev}{scope}{metric}"


class SavedRoute(NamedTuple):
    """A route as the kernel holds it: the default route, or one through the egress interface
    that the kernel did not add by itself for an address."""

    family: int
    destination: str  # "default" or an address with its prefix length
    via: str | None
    dev: str | None
    scope: str | None = None  # by name, None for the default (global) scope
    metric: int = 0

    def replace_step(self) -> Step:
        destination = batch_destination(self.destination, self.family)
        return Step(
            "route replace", self.dev, None, destination, self.family, self.via, self.scope, metric=self.metric
        )


class NetSnapshot(NamedTuple):
    """What a reconcile may change, read before it changes anything, so that a failure part-way
    can put it back."""

    link: LinkState | None
    routes: tuple[SavedRoute, ...]
    sysctls: tuple[tuple[str, str | None], ...]


class NetBackend(Protocol):
    def snapshot(self, name: str, families: tuple[int, ...], sysctls: tuple[str, ...]) -> NetSnapshot:
        """The interface (None inside when it does not exist), the routes of `families` that a
        reconcile may change (default ones, and those through the interface) and the values of
        `sysctls`."""

    def restore(self, snapshot: NetSnapshot, plan: NetworkPlan) -> None:
        """Undo what `configure` and `set_sysctl` did since `snapshot`; raises `ApplyError`."""

    def configure(self, plan: NetworkPlan, remove: tuple[IPInterface, ...]) -> None:
        """Bring the link up, set addresses and routes; safe to repeat. Raises `ApplyError`."""

    def set_sysctl(self, key: str, value: str) -> None:
        """Write `/proc/sys/<key>` of this namespace; raises `ApplyError`."""

    def has_carrier(self, name: str) -> bool | None:
        """Whether the link's lower layer is up (None: cannot tell)."""


# The metric the kernel gives a route added without one.
KERNEL_METRIC = {4: 0, 6: 1024}


def setup_steps(plan: NetworkPlan, remove: tuple[IPInterface, ...]) -> list[Step]:
    """The steps that make the interface and routes what `plan` says: replace-only, so taking
    them twice is harmless."""
    dev = plan.interface
    steps = [Step("address del", dev, a) for a in remove]
    steps.append(Step("link up", dev))
    for a in plan.addresses:
        # nodad: an IPv6 source must be usable at once, not after a second of duplicate
        # address detection (the announcement that follows tells the LAN instead).
        steps.append(Step("address replace", dev, a, nodad=a.version == 6))
    for r in plan.routes:
        via = str(r.via) if r.via is not None else None
        steps.append(Step("route replace", dev, None, r.destination, r.family, via))
    return steps


def restore_steps(snapshot: NetSnapshot, plan: NetworkPlan) -> list[Step]:
    """The steps that put back the addresses, routes and link state of `snapshot`."""
    dev = plan.interface
    before = snapshot.link.addresses if snapshot.link else ()
    steps = [Step("address del", dev, a) for a in plan.addresses if a not in before]
    # Down first: taking a link down drops its IPv6 addresses, so they are all put back after.
    # (A link that was down had no routes through it: the kernel removes them.)
    went_down = snapshot.link is not None and not snapshot.link.up
    if went_down:
        steps.append(Step("link down", dev))
    steps += [Step("address replace", dev, a) for a in before if went_down or a not in plan.addresses]
    families = {r.family for r in plan.routes}
    saved = [r for r in snapshot.routes if r.family in families]
    for r in plan.routes:
        via = str(r.via) if r.via is not None else None
        ours = (r.family, r.destination, via, dev, KERNEL_METRIC[r.family])
        # Left alone only if it was there before exactly as the plan put it (a route with
        # another metric, gateway or device was not replaced by ours, but joined by it).
        if not any((s.family, s.destination, s.via, s.dev, s.metric) == ours for s in saved):
            destination = batch_destination(r.destination, r.family)
            steps.append(Step("route del", dev, None, destination, r.family, via))
    # Removing an interface's last address takes its routes with it: put them all back, those
    # without a gateway first, as they may be what makes a gateway reachable.
    steps += [r.replace_step() for r in sorted(saved, key=lambda r: r.via is not None)]
    return steps
