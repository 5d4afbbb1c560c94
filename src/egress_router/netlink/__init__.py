"""Links, addresses, routes and sysctls of the router's namespace.

`NetBackend` is the narrow interface the reconcile step needs; `IpRoute2` drives the `ip` command
(one `ip -batch` per change: the start-up path cannot afford pyroute2's import time), and
`FakeNet` keeps the same state in memory for tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..model import IPInterface
from ..plan import NetworkPlan


@dataclass(frozen=True)
class LinkState:
    name: str
    up: bool  # administratively up
    carrier: bool  # the lower layer is up too
    mac: str
    mtu: int
    addresses: tuple[IPInterface, ...]  # global scope only: link-local ones are the kernel's


@dataclass(frozen=True)
class DefaultRoute:
    family: int
    via: str | None
    dev: str | None


@dataclass(frozen=True)
class NetSnapshot:
    """What a reconcile may change, read before it changes anything, so that a failure part-way
    can put it back."""

    link: LinkState | None
    default_routes: tuple[DefaultRoute, ...]
    sysctls: tuple[tuple[str, str | None], ...]


class NetBackend(Protocol):
    def snapshot(self, name: str, families: tuple[int, ...], sysctls: tuple[str, ...]) -> NetSnapshot:
        """The interface (None inside when it does not exist), the default routes of `families`
        and the values of `sysctls`."""

    def restore(self, snapshot: NetSnapshot, plan: NetworkPlan) -> None:
        """Undo what `configure` and `set_sysctl` did since `snapshot`; raises `ApplyError`."""

    def link(self, name: str) -> LinkState | None:
        """The interface's state, or None when it does not exist."""

    def configure(self, plan: NetworkPlan, remove: tuple[IPInterface, ...]) -> None:
        """Bring the link up, set addresses and routes; safe to repeat. Raises `ApplyError`."""

    def set_sysctl(self, key: str, value: str) -> None:
        """Write `/proc/sys/<key>` of this namespace; raises `ApplyError`."""
