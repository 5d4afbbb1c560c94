"""Links, addresses, routes and sysctls of the router's namespace.

`NetBackend` is the narrow interface the reconcile step needs; `IpRoute2` drives the `ip` command
(one `ip -batch` per change: the start-up path cannot afford pyroute2's import time), and
`FakeNet` keeps the same state in memory for tests.
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


class SavedRoute(NamedTuple):
    """A route as `ip -j route show` gives it: the default route, or one through the egress
    interface that the kernel did not add by itself for an address."""

    family: int
    destination: str  # "default" or an address with or without a prefix length
    via: str | None
    dev: str | None
    scope: str | None = None

    def replace_command(self) -> str:
        destination = batch_destination(self.destination, self.family)
        via = f" via {self.via}" if self.via else ""
        dev = f" dev {self.dev}" if self.dev else ""
        scope = f" scope {self.scope}" if self.scope and self.scope != "global" else ""
        return f"route replace {destination}{via}{dev}{scope}"


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
