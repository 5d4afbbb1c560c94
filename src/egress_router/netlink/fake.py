"""`NetBackend` in memory, for tests without root."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ApplyError
from ..model import IPInterface
from ..plan import NetworkPlan, Route
from . import LinkState


@dataclass
class FakeLink:
    up: bool = False
    mac: str = "02:00:00:00:00:01"
    mtu: int = 1500
    addresses: list[IPInterface] = field(default_factory=list)


@dataclass
class FakeNet:
    links: dict[str, FakeLink] = field(default_factory=dict)
    routes: dict[tuple[int, str], Route] = field(default_factory=dict)
    sysctls: dict[str, str] = field(default_factory=dict)
    read_only_sysctls: bool = False
    calls: int = 0

    def link(self, name: str) -> LinkState | None:
        link = self.links.get(name)
        if link is None:
            return None
        return LinkState(name, link.up, link.up, link.mac, link.mtu, tuple(link.addresses))

    def configure(self, plan: NetworkPlan, remove: tuple[IPInterface, ...]) -> None:
        link = self.links.get(plan.interface)
        if link is None:
            raise ApplyError(f"link set dev {plan.interface} up", "Cannot find device")
        self.calls += 1
        link.addresses = [a for a in link.addresses if a not in remove]
        link.up = True
        for a in plan.addresses:
            if a not in link.addresses:
                link.addresses.append(a)
        for r in plan.routes:
            self.routes[(r.family, r.destination)] = r

    def set_sysctl(self, key: str, value: str) -> None:
        if self.read_only_sysctls and self.sysctls.get(key) != value:
            raise ApplyError(f"set {key.replace('/', '.')}={value}", "Read-only file system")
        self.sysctls[key] = value
