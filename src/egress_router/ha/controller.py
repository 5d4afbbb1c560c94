"""The HA controller: follows keepalived's state and moves the router between its roles.

- `standby` (the start): fully set up (the table, the policy routing, the routes of table
  2430 without a preferred source) but no address on the egress interface; the gate closed;
  connections that reach it are relayed to the active, whose pod address the VRRP adverts
  carry as their source (`AdvertListener`).
- `active` (keepalived says MASTER): in one nft transaction the relay goes and the gate opens;
  then the addresses are added, the LAN is told (gratuitous ARP, unsolicited NA, repeated over
  about a second), and only then is the replica ready.
- `fault` (keepalived says FAULT, e.g. the LAN link is down): as a standby.

Everything that changes the kernel runs in the daemon's main loop (`step`), woken by SIGUSR1
from the threads that read keepalived's FIFO and the adverts; the only other writer is the
gate's `Refresher`.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, ip_address
from typing import TYPE_CHECKING, Any

from ..errors import EgressRouterError, SetupError
from ..log import Log
from ..model import RouterConfig
from ..network.state import Address
from ..plan import Plan
from . import gate
from .gate import ANCHOR_ADDRESS
from .keepalived import PLACEHOLDER, Keepalived, advert_interface, parse_fifo_line, render
from .settings import HaConfig

if TYPE_CHECKING:
    from ..daemon import Daemon
    from ..reconcile import Router

WAKE = signal.SIGUSR1
IPPROTO_VRRP = 112
VRRP_GROUP = "224.0.0.18"
PEER_FRESH_FOR = 1.0  # seconds an advert names the active
ANNOUNCE_AGAIN_AFTER = (0.2, 0.5, 1.0)  # after the takeover's first announcement
RESTART_AFTER = 1.0  # seconds before a keepalived that died is started again
# The active tells the LAN again this often: after a split brain heals, the LAN's caches come
# back to the one active left within this time, whatever the other one announced last.
REANNOUNCE_EVERY = 10.0
# After a SIGTERM's handover, connections that still reach this replica are relayed to the new
# active this long (seconds), while the Service drops the terminating pod's endpoint.
LINGER = 2.0
ROLES = ("active", "standby", "fault")
# An IPv4 address on the egress interface in every role: without any, the kernel's reverse-path
# check (loose or strict) drops every packet that comes in on it, the VRRP adverts included.
# The IPv4 dummy address (RFC 7600), which means no host; the gate drops ARP and traffic for it.
ANCHOR = Address(IPv4Interface(f"{ANCHOR_ADDRESS}/32"))
_PLACEHOLDER = socket.inet_aton(PLACEHOLDER)


def standby_plan(plan: Plan) -> Plan:
    """`plan` without the sources: only the anchor on the egress interface, the routes of the
    router's table without a preferred source (the kernel refuses one it does not hold), and
    nothing to announce or ask the LAN."""
    network = plan.network
    routes = tuple(route._replace(source=None) for route in network.routes)
    return plan._replace(network=network._replace(addresses=(ANCHOR,), routes=routes, probes=()))


def active_plan(plan: Plan) -> Plan:
    """`plan` as it is, and the anchor."""
    network = plan.network
    return plan._replace(network=network._replace(addresses=(*network.addresses, ANCHOR)))


def pod_addresses(router: Router, config: RouterConfig) -> tuple[IPv4Address, IPv6Address | None]:
    """The pod interface's IPv4 address (the VRRP adverts' source) and, if a source is IPv6,
    its global IPv6 address (where a standby relays IPv6 connections to when this replica is
    the active), from one read of the namespace."""
    from ..plan import network_scope

    found = router.net.read(network_scope(config)).pod_addresses
    own = next((a.ip for a in found if isinstance(a.ip, IPv4Address) and not a.ip.is_link_local), None)
    if own is None:
        raise SetupError(
            f"HA needs an IPv4 address on the pod interface {config.pod_interface} (the VRRP adverts' source)",
            "VRRP runs over IPv4: give the pod network an IPv4 address",
        )
    own6 = None
    if any(s.version == 6 for s in config.sources):
        own6 = next((a.ip for a in found if isinstance(a.ip, IPv6Address) and not a.ip.is_link_local), None)
    return own, own6


PEER6_PATH = "/ha/pod-ipv6"
PEER6_TIMEOUT = 0.5  # seconds for the active's answer
PEER6_RETRY = 0.5  # seconds between attempts while it does not answer


class Peer6:
    """Learns the active's IPv6 pod address: the adverts carry only its IPv4 one, so a thread
    asks the active itself (HTTP, `PEER6_PATH` on its health port, over the pod network).
    A pod's addresses do not change while it lives: the answer is kept while the active stays
    the same, and asked again when another one is heard (a pod address may be reused by a new
    pod)."""

    def __init__(self, port: int, log: Log) -> None:
        self.port, self.log = port, log
        self.lock = threading.Lock()
        self.known: dict[IPv4Address, IPv6Address] = {}
        self.wanted: IPv4Address | None = None
        self.changed = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="ha-peer6", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def lookup(self, active: IPv4Address | None) -> IPv6Address | None:
        """The IPv6 pod address of `active`, if known; asks for it otherwise."""
        if active is None:
            return None
        with self.lock:
            if self.wanted != active:
                self.wanted = active
                self.known = {k: v for k, v in self.known.items() if k == active}
                self.changed.set()
            found = self.known.get(active)
        return found

    def _run(self) -> None:
        while not self.stopping.is_set():
            self.changed.wait(PEER6_RETRY)
            self.changed.clear()
            with self.lock:
                active = self.wanted
                if active is None or active in self.known:
                    continue
            found = self._ask(active)
            if found is None:
                continue
            with self.lock:
                if self.wanted != active:
                    continue  # another active meanwhile: ask it instead
                self.known[active] = found
            self.log.info("HA: the active's IPv6 pod address", active=str(active), ipv6=str(found))
            _wake()

    def _ask(self, active: IPv4Address) -> IPv6Address | None:
        import http.client

        connection = http.client.HTTPConnection(str(active), self.port, timeout=PEER6_TIMEOUT)
        try:
            connection.request("GET", PEER6_PATH)
            response = connection.getresponse()
            body = response.read(100).decode("ascii", "replace").strip()
            if response.status != 200:
                return None
            found = ip_address(body)
        except (OSError, ValueError, http.client.HTTPException):
            return None
        finally:
            connection.close()
        if not isinstance(found, IPv6Address) or found.is_link_local:
            return None
        return found

    def stop(self) -> None:
        self.stopping.set()
        self.changed.set()
        if self.thread.is_alive():
            self.thread.join(2)


def _wake() -> None:
    os.kill(os.getpid(), WAKE)


class Adverts:
    """What the VRRP adverts say: the latest source with our VRID and a non-zero priority is
    the active's pod address. Adverts with our VRID that carry another address than our
    placeholder come from another VRRP router: a VRID collision."""

    def __init__(self, vrid: int, own: IPv4Address, log: Log) -> None:
        self.vrid, self.own, self.log = vrid, own, log
        self.lock = threading.Lock()
        self.peer: IPv4Address | None = None
        self.seen = 0.0
        self.collisions = 0

    def current(self) -> IPv4Address | None:
        with self.lock:
            return self._fresh()

    def _fresh(self) -> IPv4Address | None:
        """The active named by an advert heard within `PEER_FRESH_FOR` (the lock held)."""
        return self.peer if time.monotonic() - self.seen < PEER_FRESH_FOR else None

    def heard(self, data: bytes, source: str) -> None:
        header = (data[0] & 0x0F) * 4 if data else 0
        advert = data[header:]
        if len(advert) < 8 or advert[0] >> 4 != 3 or advert[1] != self.vrid:
            return
        address = ip_address(source)
        if address == self.own or not isinstance(address, IPv4Address):
            return
        priority, count = advert[2], advert[3]
        if count != 1 or advert[8:12] != _PLACEHOLDER:
            with self.lock:
                self.collisions += 1
                first = self.collisions == 1
            if first:
                self.log.warning(
                    "another VRRP router uses this VRID on the LAN: choose another EGRESS_ROUTER_VRRP_ID",
                    vrid=self.vrid, source=source, addresses=count,
                )
            return
        with self.lock:
            before = self._fresh()
            self.peer = address if priority else None
            self.seen = time.monotonic()
            changed = before != self.peer
        if changed:
            _wake()


class AdvertListener(Adverts):
    """`Adverts` read from the advert interface (a raw socket) by a thread of its own."""

    def __init__(self, interface: str, vrid: int, own: IPv4Address, log: Log) -> None:
        super().__init__(vrid, own, log)
        self.interface = interface
        self.stopping = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_VRRP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        # The VRRP group on the interface, whatever keepalived does (it leaves it on exit,
        # and a replica leaving after a handover still listens for the new active).
        request = socket.inet_aton(VRRP_GROUP) + socket.inet_aton("0.0.0.0") + socket.if_nametoindex(interface).to_bytes(4, sys.byteorder)
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, request)
        self.thread = threading.Thread(target=self._run, name="ha-adverts", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.5)
            if not ready:
                continue
            try:
                data, (source, _) = self.sock.recvfrom(2048)
            except OSError:
                continue
            self.heard(data, source)

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(2)
        self.sock.close()


class FifoReader:
    """Reads keepalived's notify FIFO: the latest state of our instance."""

    def __init__(self, path: str, instance: str) -> None:
        # Read and write: the FIFO never reads as closed, whether keepalived has it open or not.
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self.instance = instance
        self.state = "INIT"
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="ha-fifo", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        pending = b""
        while not self.stopping.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.5)
            if not ready:
                continue
            try:
                pending += os.read(self.fd, 4096)
            except BlockingIOError:
                continue
            *lines, pending = pending.split(b"\n")
            for line in lines:
                parsed = parse_fifo_line(line.decode(errors="replace"))
                if parsed is not None and parsed[0] == self.instance:
                    self.state = parsed[1]
                    _wake()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(2)
        os.close(self.fd)


class HaStats:
    """What the HA metrics show."""

    def __init__(self) -> None:
        self.role = "standby"
        self.transitions = dict.fromkeys(ROLES, 0)
        self.last_transition = 0.0
        self.listener: AdvertListener | None = None
        self.pod6 = ""  # this replica's IPv6 pod address, served to a standby (http.py)

    def metrics(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        role = GaugeMetricFamily(
            "egress_router_ha_role", "1 for this replica's HA role (active, standby, fault).", labels=["role"]
        )
        for name in ROLES:
            role.add_metric([name], int(self.role == name))
        yield role
        transitions = CounterMetricFamily(
            "egress_router_ha_transitions", "HA role changes, by the role entered.", labels=["to"]
        )
        for name, count in self.transitions.items():
            transitions.add_metric([name], count)
        yield transitions
        yield GaugeMetricFamily(
            "egress_router_ha_last_transition_timestamp_seconds",
            "When this replica last changed its HA role (Unix time; 0: never).",
            value=self.last_transition,
        )
        relayed = gate.relayed_connections()
        if relayed is not None:
            yield CounterMetricFamily(
                "egress_router_ha_relayed_connections",
                "Connections this replica relayed to the active while standby.",
                value=relayed,
            )
        if self.listener is not None:
            yield CounterMetricFamily(
                "egress_router_ha_vrid_collisions",
                "VRRP adverts with this VRID from another VRRP router (carrying addresses).",
                value=self.listener.collisions,
            )


class Controller:
    def __init__(self, config: RouterConfig, ha: HaConfig, router: Router, log: Log) -> None:
        self.config, self.ha, self.router, self.log = config, ha, router, log
        self.stats = HaStats()  # its `role` is the controller's
        self.relay_target: IPv4Address | None = None
        self.relay_target6: IPv6Address | None = None
        self.relay_installed = False
        self.peer6: Peer6 | None = None  # with IPv6 sources and an IPv6 pod address
        self.keepalived: Keepalived | None = None
        self.fifo: FifoReader | None = None
        self.listener: AdvertListener | None = None
        self.refresher = gate.Refresher(config, self._refresh_failed)
        self.restart_at = 0.0
        self.announce_at = 0.0
        self.own: IPv4Address | None = None
        self.holding = False
        router.adjust = self._adjust

    @property
    def role(self) -> str:
        return self.stats.role

    # -- set-up, before the router's first apply and in the daemon -----------------------------

    def prepare(self) -> None:
        """Before the first apply: the HA tables anew, gate closed (a restarted container may
        find its old address: the apply that follows removes it; until then nobody is
        answered for it)."""
        gate.apply(gate.table_script(self.config))
        self.own, own6 = pod_addresses(self.router, self.config)
        self.stats.pod6 = str(own6) if own6 is not None else ""
        if own6 is not None and self.config.served_http_port:
            self.peer6 = Peer6(self.config.served_http_port, self.log)

    def _adjust(self, plan: Plan) -> Plan:
        return active_plan(plan) if self.holding else standby_plan(plan)

    def begin(self, daemon: Daemon) -> None:
        """In the daemon, signals blocked: the listeners, then keepalived."""
        daemon.stats.ha = self.stats
        daemon.stats.serves = False
        assert self.own is not None
        self.listener = AdvertListener(advert_interface(self.config, self.ha), self.ha.vrid, self.own, self.log)
        self.stats.listener = self.listener
        self.listener.start()
        if self.peer6 is not None:
            self.peer6.start()
        self.refresher.start()
        self.keepalived = Keepalived(self.ha.runtime_dir)
        self.fifo = FifoReader(self.keepalived.fifo, self.ha.instance)
        self.fifo.start()
        self._start_keepalived()
        self.log.info("HA standby: waiting for the VRRP election", vrid=self.ha.vrid, source=str(self.own),
                      peers=",".join(map(str, self.ha.peers)) or "multicast")

    def _start_keepalived(self) -> None:
        assert self.keepalived is not None and self.own is not None
        text = render(self.config, self.ha, self.own, self.keepalived.fifo)
        self.keepalived.start(text)

    # -- the loop ------------------------------------------------------------------------------

    def step(self, daemon: Daemon) -> None:
        assert self.keepalived is not None and self.fifo is not None and self.listener is not None
        code = self.keepalived.exited()
        if code is not None:
            if self.restart_at == 0.0:
                self.log.error("keepalived exited; standing by until it runs again", status=code)
                self.restart_at = time.monotonic() + RESTART_AFTER
                if self.role == "active":
                    self._release(daemon, "fault")
                self.fifo.state = "INIT"
            elif time.monotonic() >= self.restart_at:
                self.restart_at = 0.0
                self._start_keepalived()
        state = self.fifo.state
        if state == "MASTER" and self.role != "active" and self.restart_at == 0.0:
            self._takeover(daemon)
        elif state == "BACKUP" and self.role != "standby":
            self._release(daemon, "standby")
        elif state in ("FAULT", "STOP") and self.role != "fault":
            self._release(daemon, "fault")
        if self.refresher.failing:
            self._repair_gate()
        if self.role != "active":
            target = self.listener.current()
            self._relay(target, self._target6(target))
        elif time.monotonic() >= self.announce_at:
            self._announce_again((0.0,))
        # A dual-stack standby serves once it relays both families.
        relays = self.relay_target is not None and (self.peer6 is None or self.relay_target6 is not None)
        daemon.stats.serves = self.role == "active" or relays

    def _target6(self, target: IPv4Address | None) -> IPv6Address | None:
        return self.peer6.lookup(target) if self.peer6 is not None else None

    def _transition(self, role: str, started: float) -> None:
        self.stats.role = role
        self.stats.transitions[role] += 1
        self.stats.last_transition = time.time()
        self.log.info(f"HA: now {role}", seconds=f"{time.monotonic() - started:.3f}")

    def _takeover(self, daemon: Daemon) -> None:
        started = time.monotonic()
        try:
            # One transaction: no more relaying, and the gate open.
            gate.apply(gate.relay_script(self.config, None) + gate.alive_script(self.config))
        except EgressRouterError as error:
            self.log.error("HA takeover failed: could not open the gate", error=str(error))
            return
        self.relay_target, self.relay_target6, self.relay_installed = None, None, False
        self.refresher.active.set()
        self.holding = True
        # The configuration in force (a reload may have replaced the one HA started with).
        if not daemon._apply(daemon.config, "takeover"):  # the addresses, announced once
            self.log.error("HA takeover failed: the addresses could not be added")
        self._announce_again()
        self._transition("active", started)

    def _release(self, daemon: Daemon, role: str) -> None:
        started = time.monotonic()
        self.refresher.pause()
        if self.role == "active":
            self._close_gate()
            self.holding = False
            daemon._apply(daemon.config, "release")
        self._transition(role, started)

    def _close_gate(self) -> None:
        """Close the gate at once (the refresher paused first, so nothing reopens it)."""
        try:
            gate.apply(gate.closed_script())
        except EgressRouterError as error:
            self.log.error("could not close the HA gate", error=str(error))

    def _repair_gate(self) -> None:
        """The gate could not be refreshed (someone deleted or changed the HA tables): write
        them anew, as this role has them, in one transaction."""
        script = gate.table_script(self.config)
        if self.role == "active":
            script += gate.alive_script(self.config)
        else:
            script += gate.relay_script(self.config, self.relay_target, self.relay_target6)
        try:
            gate.apply(script)
        except EgressRouterError as error:
            self.log.error("could not restore the HA tables", error=str(error))
            return
        self.refresher.failing = False
        self.log.warning("the HA tables were changed by someone else; restored them")

    def _relay(self, target: IPv4Address | None, target6: IPv6Address | None = None) -> None:
        if target == self.relay_target and target6 == self.relay_target6 and self.relay_installed:
            return
        try:
            gate.apply(gate.relay_script(self.config, target, target6))
        except EgressRouterError as error:
            self.log.error("could not relay to the active replica", error=str(error))
            self.relay_installed = False
            return
        if target != self.relay_target or target6 != self.relay_target6:
            self.log.info("HA: relaying to the active replica" if target else "HA: no active replica to relay to",
                          active=str(target or ""), **({"ipv6": str(target6)} if target6 else {}))
        self.relay_target, self.relay_target6, self.relay_installed = target, target6, True

    def _announce_again(self, delays: tuple[float, ...] = ANNOUNCE_AGAIN_AFTER) -> None:
        self.announce_at = time.monotonic() + REANNOUNCE_EVERY
        addresses = [s.ip for s in self.config.sources]
        interface = self.config.egress_interface
        announcer = self.router.announcer

        def repeat() -> None:
            try:
                with open(f"/sys/class/net/{interface}/address") as handle:
                    mac = handle.read().strip()
            except OSError:
                return
            started = time.monotonic()
            for delay in delays:
                time.sleep(max(0.0, started + delay - time.monotonic()))
                if not self.holding:
                    return
                try:
                    announcer.exchange(interface, mac, addresses, (), 0.0)
                except OSError:
                    return

        threading.Thread(target=repeat, name="ha-announce", daemon=True).start()

    def _refresh_failed(self, error: str) -> None:
        self.log.error("could not refresh the HA gate", error=error)
        _wake()  # the loop puts the tables back at once

    # -- the end -------------------------------------------------------------------------------

    def _linger(self, until: float) -> None:
        """Relay to the new active, as a standby does, until `until` (time.monotonic)."""
        assert self.listener is not None
        while (left := until - time.monotonic()) > 0:
            target = self.listener.current()
            if target is not None:  # _relay leaves an unchanged relay alone
                self._relay(target, self._target6(target))
            time.sleep(min(left, 0.05))

    def close(self, daemon: Daemon) -> None:
        """SIGTERM or SIGINT: an active closes the gate and gives the address away (keepalived's
        priority-0 advert), then removes it, and for `LINGER` seconds relays what still reaches
        it to the new active (the Service takes a moment to drop a terminating pod); everything
        HA started stops."""
        started = time.monotonic()
        daemon.stats.serves = False  # not Ready any more: the endpoint goes
        if self.role == "active":
            self.refresher.pause()
            self._close_gate()
        if self.keepalived is not None:
            self.keepalived.terminate()  # its priority-0 advert: the peer takes over
        if self.role == "active":
            self.holding = False
            try:
                self.router.apply(daemon.config)
            except EgressRouterError as error:
                self.log.warning("could not remove the address on the way out", error=str(error))
            self.log.info("HA: handed over", seconds=f"{time.monotonic() - started:.3f}")
            self._linger(started + LINGER)
        if self.keepalived is not None:
            self.keepalived.stop()
        self.refresher.stop()
        for part in (self.fifo, self.listener, self.peer6):
            if part is not None:
                part.stop()
        if self.keepalived is not None:
            self.keepalived.remove()


__all__ = ["Controller", "standby_plan"]
