"""`NetBackend` in memory, for tests without root."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ..errors import ApplyError, Kind
from ..model import IPInterface
from ..plan import NetworkPlan, Route
from . import LinkState, NetSnapshot, SavedRoute


@dataclass
class FakeLink:
    up: bool = False
    mac: str = "02:00:00:00:00:01"
    mtu: int = 1500
    carrier: bool = True  # the parent is up
    addresses: list[IPInterface] = field(default_factory=list)


@dataclass
class FakeNet:
    links: dict[str, FakeLink] = field(default_factory=dict)
    routes: dict[tuple[int, str], Route] = field(default_factory=dict)
    sysctls: dict[str, str] = field(default_factory=dict)
    read_only_sysctls: bool = False
    fail_configure: str | None = None  # the next configure fails with this message
    calls: int = 0

    def _state(self, name: str) -> LinkState | None:
        link = self.links.get(name)
        if link is None:
            return None
        return LinkState(name, link.up, link.up and link.carrier, link.mac, link.mtu, tuple(link.addresses))

    def snapshot(self, name: str, families: tuple[int, ...], sysctls: tuple[str, ...]) -> NetSnapshot:
        routes = tuple(
            SavedRoute(family, destination, str(r.via) if r.via else None, name)
            for (family, destination), r in self.routes.items()
            if family in families
        )
        return NetSnapshot(self._state(name), routes, tuple((k, self.sysctls.get(k)) for k in sysctls))

    def restore(self, snapshot: NetSnapshot, plan: NetworkPlan) -> None:
        for key, value in snapshot.sysctls:
            if value is None:
                self.sysctls.pop(key, None)
            else:
                self.sysctls[key] = value
        link = self.links.get(plan.interface)
        if link is not None and snapshot.link is not None:
            link.addresses = list(snapshot.link.addresses)
            link.up = snapshot.link.up
        for r in plan.routes:
            self.routes.pop((r.family, r.destination), None)
        for saved in snapshot.routes:
            via = ipaddress.ip_address(saved.via) if saved.via else None
            self.routes[(saved.family, saved.destination)] = Route(saved.destination, via, saved.family)

    def configure(self, plan: NetworkPlan, remove: tuple[IPInterface, ...]) -> None:
        link = self.links.get(plan.interface)
        if link is None:
            raise ApplyError(f"link set dev {plan.interface} up", "Cannot find device", Kind.NOT_FOUND)
        self.calls += 1
        if self.fail_configure is not None:
            message, self.fail_configure = self.fail_configure, None
            link.up = True  # part-way: as with RtNetlink, the steps before the refused one stay
            raise ApplyError(f"route replace default dev {plan.interface}", message)
        link.addresses = [a for a in link.addresses if a not in remove]
        link.up = True
        for a in plan.addresses:
            if a not in link.addresses:
                link.addresses.append(a)
        for r in plan.routes:
            self.routes[(r.family, r.destination)] = r

    def has_carrier(self, name: str) -> bool | None:
        link = self.links.get(name)
        return None if link is None else link.up and link.carrier

    def set_sysctl(self, key: str, value: str) -> None:
        if self.read_only_sysctls and self.sysctls.get(key) != value:
            raise ApplyError(f"set {key.replace('/', '.')}={value}", "Read-only file system")
        self.sysctls[key] = value
