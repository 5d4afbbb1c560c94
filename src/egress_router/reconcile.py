"""The one reconcile step: desired state -> kernel, safe to call any time, any number of times.

`init` mode calls it once; the daemon calls it on every change and periodically. A bad config
never gets here (it is refused whole by `config`). The step then runs in an order chosen so that
a failure leaves nothing half-applied:

1. read what the router owns of the namespace (the link, its addresses, the routes of its
   table, its rules, the sysctls; `network.state`) and stop if the interface is missing; the
   caller usually read it already, to learn the facts the plan needs (the MTUs);
2. the NAT table, as one all-or-nothing transaction (its forward chain drops whatever no rule
   redirected, so switching forwarding on afterwards never opens a relay); a table this process
   did not write is read first, to be put back on a failure;
3. the network steps that `converge` gives from what was read to what the plan wants;
4. on a failure in 2-3, converge back to what was read in 1, and re-raise;
5. ask the LAN where the gateway is and whether anyone else holds the source address, and
   announce the address, when the LAN may not know them (a new address or gateway, a link
   that was down): warnings, never failures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from .errors import EgressRouterError, SetupError
from .log import Log
from .model import IPAddress, RouterConfig
from .neighbours import Announcer
from .network import NetBackend
from .network.state import NetState, Step, converge
from .nft import NftBackend, TableSpec, Transaction, diff
from .plan import Facts, NetworkPlan, Plan, build_plan, nameservers, network_scope
from .schema import ROUTE_TABLE

if TYPE_CHECKING:
    from .dns import Answers

MISSING_INTERFACE_HINT = (
    'on OpenShift SDN it is created by the Pod annotation pod.network.openshift.io/assign-macvlan: "true" '
    "(the value quoted: a bare true is a boolean and is ignored); elsewhere attach a macvlan "
    "network (Multus NetworkAttachmentDefinition, or the egress-router-cni plugin); "
    "if it has another name, set EGRESS_INTERFACE"
)
GATEWAY_ANSWER_TIMEOUT = 0.5  # seconds; only a gateway that does not answer costs this much


class Outcome:
    """What one reconcile did, for logs and metrics."""

    def __init__(self) -> None:
        self.transaction: Transaction | None = None
        self.full_table = False
        self.network_steps: list[Step] = []
        self.announced: tuple[str, ...] = ()
        self.conflicts: tuple[str, ...] = ()  # MACs of other hosts answering for the source
        self.warnings: list[str] = []
        self.seconds = 0.0

    @property
    def nft_script(self) -> str:
        """What was sent to the kernel, in nft's syntax (a batch as the element lines it
        carries): rendered only when asked for (at 10,000 rules that takes a millisecond a
        pod start need not spend)."""
        return "" if self.transaction is None else str(self.transaction)

    @property
    def route(self) -> str:
        """How the table was written: a netlink batch, a create then a fill, or `nft -f`."""
        return "" if self.transaction is None else self.transaction.route

    @property
    def operations(self) -> int:
        return 0 if self.transaction is None else len(self.transaction.ops)


class Before(NamedTuple):
    """The table a reconcile found in the kernel, to go back to: `table` when its structure is
    this version's (a restart found its own tag), else `listing`, nft's text of it; neither:
    there was none."""

    table: TableSpec | None
    listing: str | None = None


class Router:
    """The reconcile step with its adapters, and what it last applied.

    Plain classes rather than dataclasses on this path: importing `dataclasses` (and the
    `inspect` it pulls in) costs every pod start several milliseconds."""

    def __init__(
        self, nft: NftBackend, net: NetBackend, announcer: Announcer, log: Log | None = None
    ) -> None:
        self.nft, self.net, self.announcer = nft, net, announcer
        self.log = log if log is not None else Log()
        self.applied: TableSpec | None = None  # what this process last put in the kernel
        self.applied_network: NetworkPlan | None = None  # likewise for the network side
        self.facts: Facts | None = None  # what the last plan was made with
        self.resolv_conf = "/etc/resolv.conf"  # the pod's nameservers (the proxy modes)
        self.distrust = False  # True: a table found in the kernel is replaced whole, whatever its tag
        self.answers: Answers = ()  # the destination names' current addresses (`dns`)
        self.adjust: Callable[[Plan], Plan] | None = None  # HA: a standby's plan holds no address

    def forget(self) -> None:
        """The kernel may no longer hold what was applied (drift, a failure): the next
        reconcile replaces the table whole and sets the network up again."""
        self.applied = None
        self.applied_network = None
        self.distrust = True

    def plan(self, config: RouterConfig, fresh: bool = True) -> tuple[Plan, NetState | None]:
        """The plan for `config`, and the state read to make it (None: made with the facts
        of the last one, as a reload of the rules alone may be)."""
        current = None
        if fresh or self.facts is None:
            current = self.net.read(network_scope(config))
            self.facts = Facts.of(current, read_nameservers(config, self.resolv_conf))
        plan = build_plan(config, self.facts._replace(answers=self.answers))
        return (plan if self.adjust is None else self.adjust(plan)), current

    def apply(self, config: RouterConfig, fresh: bool = True, announce: bool = False) -> Outcome:
        """Plan `config` (see `plan`) and reconcile the kernel to it."""
        plan, current = self.plan(config, fresh)
        return self.reconcile(plan, current, announce)

    def reconcile(self, plan: Plan, current: NetState | None = None, announce: bool = False) -> Outcome:
        """Make the kernel hold `plan`. `current`: the namespace as just read, if the caller
        has it. Raises `SetupError` or `ApplyError`, after putting back whatever it changed."""
        started = time.perf_counter()
        network = plan.network
        outcome = Outcome()
        if current is None and network == self.applied_network and not announce:
            # A reload of the rules only: one element transaction, all-or-nothing by itself.
            self._apply_table(plan, outcome)
            outcome.seconds = time.perf_counter() - started
            return outcome
        if current is None:
            current = self.net.read(network.scope)
        if current.link is None:
            raise SetupError(
                f"the egress interface {network.interface} does not exist in this pod",
                MISSING_INTERFACE_HINT,
            )
        steps = converge(current, network.wanted(current.link))
        before = self.applied
        listing = None
        try:
            listing = self._apply_table(plan, outcome)
            self._apply_network(steps, outcome)
        except EgressRouterError:
            self._roll_back(plan, current, before, listing)
            self.applied_network = None
            raise
        self.applied_network = network
        if self.net.has_carrier(network.interface) is False:
            outcome.warnings.append(
                f"{network.interface} has no carrier: its parent interface on the node may be down"
            )
        if network.probes and (announce or _lan_may_not_know(network, current)):
            self._neighbours(network, current.link.mac, outcome)
        for warning in outcome.warnings:
            self.log.warning(warning)
        outcome.seconds = time.perf_counter() - started
        return outcome

    def _apply_table(self, plan: Plan, outcome: Outcome) -> Before | None:
        """Apply the table. When this process had not applied one, return what the kernel held
        before, the state to go back to if the reconcile fails later."""
        table = plan.table
        if self.applied is not None:
            self._run(diff(self.applied, table), outcome, table)
            return None
        held = self.nft.read(table)
        if not held.exists:  # a new pod
            create = Transaction()
            create.create_table(table)
            self._run(create, outcome, table)
            return Before(None)
        if held.table is not None and not self.distrust:
            # A restart: the kernel holds this version's structure (its tag says so). Only
            # the elements can differ: one batch of the difference.
            self._run(diff(held.table, table), outcome, table)
            return Before(held.table)
        # Another structure (an upgrade, a changed interface or fallback), or a table found
        # altered: replaced whole, and its listing kept to put back.
        listing = self.nft.list_table(table.family, table.name)
        self._run(diff(None, table), outcome, table)
        return Before(None, listing)

    def _run(self, tx: Transaction, outcome: Outcome, table: TableSpec) -> None:
        outcome.transaction = tx
        outcome.full_table = tx.writes_table
        if self.log.debug_enabled:
            self.log.debug("applying nftables transaction", route=tx.route, operations=len(tx.ops), full=outcome.full_table)
            for line in str(tx).splitlines():  # what is sent, as nft's syntax
                self.log.debug(f"nft: {line}")
        self.nft.apply(tx)
        self.applied = table
        self.distrust = False

    def _apply_network(self, steps: list[Step], outcome: Outcome) -> None:
        outcome.network_steps = steps
        for step in steps:
            self.log.debug("network step", step=str(step))
        self.net.apply(steps)

    def _roll_back(
        self, plan: Plan, current: NetState, before: TableSpec | None, listing: Before | None
    ) -> None:
        """Put back the network and the table, each on its own: one failing to come back must
        not keep the other from it."""
        restored = True
        try:
            now = self.net.read(plan.network.scope)
            if now.link is not None and current.link is not None:
                self.net.apply(converge(now, current), keep_going=True)
        except EgressRouterError as error:
            restored = False
            self.log.error("could not restore the previous network setup", error=str(error))
        if self.applied is plan.table:
            try:
                self.nft.apply(_table_back(plan.table, before, listing))
                self.applied = before if listing is None else listing.table
                # A table put back from its listing is not known to be this version's.
                self.distrust = listing is not None and listing.listing is not None
            except EgressRouterError as error:
                restored = False
                self.applied = None  # unknown now: the next reconcile replaces the table whole
                self.distrust = True
                self.log.error("could not restore the previous nftables table", error=str(error))
        if restored:
            self.log.warning("failed part-way; the previous state is restored")

    def _neighbours(self, network: NetworkPlan, mac: str, outcome: Outcome) -> None:
        probes = [(p.source, p.gateway) for p in network.probes]
        addresses = [source for source, _ in probes]  # the sources: what the LAN must know
        try:
            report = self.announcer.exchange(
                network.interface, mac, addresses, probes, GATEWAY_ANSWER_TIMEOUT
            )
        except OSError as error:
            # Not fatal: the LAN learns the address on its own once its neighbour entry expires.
            outcome.warnings.append(
                "could not announce the source address, the LAN may take a while to learn it: "
                f"{error.strerror or error}"
            )
            return
        outcome.announced = tuple(str(a) for a in addresses)
        self.log.debug("announced", addresses=",".join(outcome.announced), mac=mac)
        for _, gateway in probes:
            if str(gateway) not in report.answered:
                asked = "ARP" if gateway.version == 4 else "neighbour solicitation"
                outcome.warnings.append(
                    f"the gateway {gateway} did not answer {asked} on {network.interface} within "
                    f"{GATEWAY_ANSWER_TIMEOUT} s: check EGRESS_GATEWAY and the LAN"
                )
        outcome.conflicts = tuple(other for _, other in report.conflicts)
        for address, other in report.conflicts:
            outcome.warnings.append(
                f"another host ({other}) answers for {address} on the LAN: if it is the "
                "previous router pod going away this passes, otherwise two hosts share the "
                "reserved address"
            )


def _lan_may_not_know(network: NetworkPlan, current: NetState) -> bool:
    """Whether to ask the LAN about the gateway and announce the source: a new address, a new
    gateway (a typo in it must not pass silently on a running pod), or a link that was down
    (the address may have been there, unannounced)."""
    if not current.up:
        return True
    if any(a.address not in current.ips() for a in network.addresses):
        return True
    return any(current.route_via(ROUTE_TABLE, p.gateway.version) != str(p.gateway) for p in network.probes)


def read_nameservers(config: RouterConfig, path: str = "/etc/resolv.conf") -> tuple[IPAddress, ...]:
    """The pod's nameservers, which the proxy modes keep on the pod network; () otherwise."""
    if config.mode.redirects:
        return ()
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError:
        return ()
    return nameservers(text)


def _table_back(table: TableSpec, before: TableSpec | None, found: Before | None) -> Transaction:
    """The transaction from `table` back to what the kernel held before it: `before` (what this
    process had applied), or what the reconcile found there (`found`)."""
    known = before if found is None else found.table
    if known is not None:
        return diff(table, known)
    tx = Transaction()
    if found is None or found.listing is None:
        tx.delete_table(table.family, table.name)
    else:
        tx.restore_listing(table.family, table.name, found.listing)
    return tx
