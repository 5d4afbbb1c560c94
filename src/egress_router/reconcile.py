"""The one reconcile step: desired state -> kernel, safe to call any time, any number of times.

`init` mode calls it once; the daemon calls it on every change and periodically. The order is
chosen so that a failure leaves as little as possible changed: everything is validated before
this runs (a bad config never reaches it), the interface is checked before anything is written,
the NAT table goes in as one all-or-nothing transaction, and only then are the addresses and
routes set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .announce import Announcer
from .errors import SetupError
from .log import Log
from .model import RouterConfig
from .netlink import NetBackend
from .nft import NftBackend, TableSpec, diff
from .plan import Plan, build_plan

MISSING_INTERFACE_HINT = (
    'on OpenShift SDN it is created by the Pod annotation pod.network.openshift.io/assign-macvlan: "true" '
    "(the value quoted: a bare true is a boolean and is ignored); elsewhere attach a macvlan "
    "network (Multus NetworkAttachmentDefinition, or the egress-router-cni plugin); "
    "if it has another name, set EGRESS_INTERFACE"
)


@dataclass
class Outcome:
    """What one reconcile did, for logs and metrics."""

    nft_script: str = ""
    full_table: bool = False
    announced: tuple[str, ...] = ()
    seconds: float = 0.0


@dataclass
class Router:
    nft: NftBackend
    net: NetBackend
    announcer: Announcer
    log: Log = field(default_factory=Log)
    applied: TableSpec | None = None  # what this process last put in the kernel (None: unknown)

    def reconcile(self, config: RouterConfig, announce: bool = False) -> Outcome:
        """Make the kernel hold `config`. Raises `SetupError` or `ApplyError`."""
        started = time.perf_counter()
        plan = build_plan(config)
        outcome = Outcome()
        link = self.net.link(plan.network.interface)
        if link is None:
            raise SetupError(
                f"the egress interface {plan.network.interface} does not exist in this pod",
                MISSING_INTERFACE_HINT,
            )
        if plan.table is not None:
            tx = diff(self.applied, plan.table)
            outcome.nft_script = str(tx)
            outcome.full_table = any(kind == "replace" for kind, _ in tx.ops)
            self.log.debug("applying nftables transaction", operations=len(tx.ops), full=outcome.full_table)
            self.nft.apply(tx)
            self.applied = plan.table
        self._configure_network(plan, link.addresses, link.up)
        new = [a.ip for a in plan.network.addresses if a not in link.addresses]
        if new or announce:
            outcome.announced = tuple(str(a.ip) for a in plan.network.addresses)
            self._announce(plan, link.mac)
        outcome.seconds = time.perf_counter() - started
        return outcome

    def _configure_network(self, plan: Plan, current: tuple, was_up: bool) -> None:  # type: ignore[type-arg]
        network = plan.network
        stale = tuple(a for a in current if a not in network.addresses)
        if not was_up:
            self.log.debug("bringing the egress interface up", interface=network.interface)
        for a in stale:
            self.log.debug("removing stale address", address=str(a), interface=network.interface)
        self.net.configure(network, stale)
        self.log.debug(
            "network set up",
            interface=network.interface,
            addresses=",".join(str(a) for a in network.addresses),
            routes=",".join(f"{r.destination} via {r.via}" if r.via else r.destination for r in network.routes),
        )
        for key, value in network.sysctls:
            self.net.set_sysctl(key, value)
            self.log.debug("sysctl set", key=key.replace("/", "."), value=value)

    def _announce(self, plan: Plan, mac: str) -> None:
        network = plan.network
        addresses = [a.ip for a in network.addresses]
        try:
            self.announcer.announce(network.interface, mac, addresses)
        except OSError as error:
            # Not fatal: the LAN learns the address on its own once its neighbour entry expires.
            self.log.warning(
                "could not announce the source address; the LAN may take a while to learn it",
                error=error.strerror or str(error),
            )
        else:
            self.log.debug("announced", addresses=",".join(map(str, addresses)), mac=mac)
