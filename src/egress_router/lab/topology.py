"""`Lab`: the topology of docs/lab.md on the real kernel, built on enter and removed on exit.

    client eth0 ── node (node_b) ── router eth0
                  nic0 ── br0 (lan) ── gw ── ext
    router macvlan0 ┄ (macvlan on node's nic0)

How the pods hang off their nodes is the lab's `wiring` (lab/wirings.py: shared, calico,
per-node), as a real cluster's CNI would wire them.

Building is a handful of `ip -batch` calls (namespaces and veths from the host in one batch,
then one batch per namespace), so a lab is up in a fraction of a second. Every veth end is
created directly inside its namespace: nothing ever appears in the host's namespace, and two
labs (tests beside a demo) never collide on a name.

Teardown kills every process the lab started and every other process still in its namespaces,
and deletes the namespaces (their interfaces go with them). It runs on exit from the `with`
block whatever the reason (exception, Ctrl-C), and at interpreter exit for a lab left open.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Self

from ..schema import TABLE_FAMILY, TABLE_NAME
from . import addresses as A
from . import podstate
from . import wirings as W
from .netns import delete_namespaces, in_netns, ip, ip_batch, read_sysctl, write_sysctls
from .probe import (
    HttpReply,
    Probe,
    Stream,
    Transfer,
    download,
    http_get,
    learn_path_mtu,
    probe_tcp,
    probe_udp,
    upload,
)
from .servers import format_spec

# Where `python -m egress_router` finds this very checkout, installed or not.
SOURCE_ROOT = str(Path(__file__).resolve().parents[2])
TABLE = (TABLE_FAMILY, TABLE_NAME)


class LabError(RuntimeError):
    """The lab could not be built or used; the message says which step failed and why."""


class LabCommandError(subprocess.CalledProcessError):
    """A command run in a lab namespace failed; unlike its base class, it shows stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}: {(self.stderr or '').strip()}"


class NamespaceLab:
    """Network namespaces named `<prefix><role>`, one per role of `roles()`, and the processes
    started in them: what every lab shares. `build()` (a subclass's) starts with `_building()`;
    `destroy()` removes it all, is safe to call again and runs at interpreter exit too. A
    subclass removes its own extras in `_tear_down()`, once the processes are stopped and
    before the namespaces go."""

    def __init__(self) -> None:
        self.prefix = f"erl-{os.getpid()}-{secrets.token_hex(2)}-"
        self._processes: list[subprocess.Popen[str]] = []
        self._built = False

    def roles(self) -> Sequence[str]:
        raise NotImplementedError

    def build(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.build()
        except BaseException:  # also KeyboardInterrupt: never leave half a lab behind
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def _building(self) -> None:
        # Registered first, so that even a build cut short is removed at interpreter exit.
        atexit.register(self.destroy)
        self._built = True

    def _tear_down(self) -> None:
        """What a subclass made beyond its namespaces and processes."""

    def destroy(self) -> None:
        """Remove everything this lab made; safe to call again, and from atexit."""
        if not self._built:
            return
        for process in self._processes:
            stop_process(process)
        self._processes.clear()
        self._tear_down()
        delete_namespaces(self.ns(role) for role in self.roles())
        self._built = False
        atexit.unregister(self.destroy)

    # -- names and commands -------------------------------------------------------------------

    def ns(self, role: str) -> str:
        if role not in self.roles():
            raise ValueError(f"unknown lab role {role!r} (one of {', '.join(self.roles())})")
        return self.prefix + role

    def exec(
        self,
        role: str,
        argv: Sequence[str],
        check: bool = True,
        timeout: float = 10,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the namespace of `role` and wait for it (output captured, as text)."""
        done = subprocess.run(
            self._in_ns(role, argv),
            check=False,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=None if env is None else dict(env),
        )
        if check and done.returncode != 0:
            raise LabCommandError(done.returncode, list(argv), done.stdout, done.stderr)
        return done

    def popen(
        self, role: str, argv: Sequence[str], env: Mapping[str, str] | None = None, **kw: object
    ) -> subprocess.Popen[str]:
        """Start `argv` in the namespace of `role`; it is stopped when the lab is destroyed."""
        kw.setdefault("text", True)
        # Its own session, so that stopping it also stops whatever it started.
        process: subprocess.Popen[str] = subprocess.Popen(  # type: ignore[call-overload]
            self._in_ns(role, argv),
            env=None if env is None else dict(env),
            start_new_session=True,
            **kw,
        )
        self._processes.append(process)
        return process

    def _in_ns(self, role: str, argv: Sequence[str]) -> list[str]:
        # `ip netns exec` also gives the command the namespace's /sys, as a pod would see it.
        return ["ip", "netns", "exec", self.ns(role), *argv]


class Lab(NamespaceLab):
    """The lab topology. See the module docstring and docs/lab.md."""

    def __init__(
        self,
        ipv6: bool = False,
        macvlan: bool = True,
        wiring: str = W.DEFAULT_WIRING,
        rp_filter: int = 1,
        pod_mtu: int = W.DEFAULT_MTU,
        drop_icmp_too_big: bool = False,
    ) -> None:
        """`wiring`: how the pods hang off their nodes (lab/wirings.py). `rp_filter`: the
        router namespace's net.ipv4.conf.{all,default}.rp_filter, set before its interfaces
        exist (1, strict, as many nodes have it; 0 opts out). `pod_mtu`: the MTU of the router
        pod's veth pair (the client's stays 1500). `drop_icmp_too_big`: the LAN gateway and the
        nodes drop "fragmentation needed" and "packet too big" (see `set_icmp_too_big_dropped`)."""
        self.ipv6 = ipv6
        self.with_macvlan = macvlan
        self.wiring = W.wiring(wiring)
        self.rp_filter = rp_filter
        self.pod_mtu = pod_mtu
        self.drop_icmp_too_big = drop_icmp_too_big
        super().__init__()
        self._streams: list[Stream] = []
        self._macvlans = 0

    # -- life cycle ---------------------------------------------------------------------------

    def roles(self) -> Sequence[str]:
        return self.wiring.roles

    def build(self) -> None:
        self._building()
        roles = self.wiring.roles
        ip_batch([f"netns add {self.ns(role)}" for role in roles])
        for role in roles:
            write_sysctls(self.ns(role), W.sysctls(role, self.rp_filter))
        ip_batch(W.host_links(self.wiring, self.ns, self.pod_mtu))
        for role in self.wiring.nodes:
            write_sysctls(self.ns(role), W.link_sysctls(self.wiring, role, self.ipv6))
        self._configure_namespaces()
        self.nft(self.wiring.client.node, W.kube_proxy(self.wiring, self.ipv6))
        self.set_icmp_too_big_dropped(self.drop_icmp_too_big)
        if self.with_macvlan:
            self.create_macvlan()
        self._wait_for_bridge()

    def _configure_namespaces(self) -> None:
        # The bridge last: a bridge port whose veth peer is already up forwards at once, while
        # one that gets its carrier later waits for the kernel's linkwatch, up to a second,
        # during which the LAN silently drops frames (a lost SYN, a lost announcement).
        self._configure_parallel([role for role in self.wiring.roles if role != "lan"])
        self._configure_parallel(["lan"])

    def _configure_parallel(self, roles: list[str]) -> None:
        # One `ip -n NS -batch` per namespace, all at once: they touch disjoint namespaces.
        running = [
            (
                role,
                subprocess.Popen(
                    ["ip", "-n", self.ns(role), "-batch", "-"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            )
            for role in roles
        ]
        failures = []
        for role, process in running:
            lines = W.namespace_setup(self.wiring, role, self.ipv6)
            script = "".join(f"{line}\n" for line in lines)
            _, err = process.communicate(script, timeout=30)
            if process.returncode != 0:
                failures.append(f"{role}: {err.strip()}")
        if failures:
            raise LabError("failed to configure the lab namespaces: " + "; ".join(failures))

    def _wait_for_bridge(self, timeout: float = 3.0) -> None:
        # A bridge port forwards only once the kernel's linkwatch has seen its carrier, which
        # it may batch for up to a second; until then the LAN drops every frame. Frames lost
        # there would look like router bugs (a lost announcement, a SYN retransmitted after a
        # second), so the lab is not handed out before both ports forward.
        deadline = time.monotonic() + timeout
        while True:
            done = ip(["-n", self.ns("lan"), "-j", "-d", "link", "show", "master", "br0"])
            states = {
                link["ifname"]: link.get("linkinfo", {}).get("info_slave_data", {}).get("state")
                for link in json.loads(done.stdout)
            }
            if set(states) == set(self.wiring.bridge_ports) and all(s == "forwarding" for s in states.values()):
                return
            if time.monotonic() > deadline:
                raise LabError(f"the LAN bridge ports do not forward after {timeout}s: {states}")
            time.sleep(0.01)

    def _tear_down(self) -> None:
        for stream in self._streams:
            stream.close()
        self._streams.clear()

    # -- commands -----------------------------------------------------------------------------

    def sysctl(self, role: str, key: str) -> str:
        """e.g. `lab.sysctl("router", "net/ipv4/ip_forward")`."""
        return read_sysctl(self.ns(role), key)

    # -- the router ---------------------------------------------------------------------------

    def router_env(self, env: Mapping[str, str]) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "PYTHONPATH": SOURCE_ROOT,
            **env,
        }

    def run_router(
        self, env: Mapping[str, str], timeout: float = 15
    ) -> subprocess.CompletedProcess[str]:
        """Run the router once in the router namespace with `env` (plus PATH, and PYTHONPATH
        pointing at this checkout); a non-zero exit is returned, not raised."""
        return self.exec(
            "router",
            [sys.executable, "-m", "egress_router"],
            check=False,
            timeout=timeout,
            env=self.router_env(env),
        )

    def start_router(self, env: Mapping[str, str], **kw: object) -> subprocess.Popen[str]:
        """Start the router in the background (legacy mode), stdout and stderr piped."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return self.popen(
            "router", [sys.executable, "-m", "egress_router"], env=self.router_env(env), **kw
        )

    def nft_table(self) -> str | None:
        """`nft list table inet egress_router` in the router namespace, None if there is none."""
        done = self.exec("router", ["nft", "list", "table", *TABLE], check=False)
        return done.stdout if done.returncode == 0 else None

    def reset_router(self) -> None:
        """Put the router namespace back as a new pod of this wiring has it, whatever a router
        run did: no nftables table, macvlan0 present, down and without address, no rules but
        the kernel's, no routing table but main and local, eth0's routes as its CNI set them,
        forwarding off, rp_filter as the lab was built. Tests sharing one lab start here."""
        self.exec("router", ["nft", "delete", "table", *TABLE], check=False)
        if self.has_link("router", "macvlan0"):
            self._router_batch(None, ["address flush dev macvlan0", "link set macvlan0 down"])
        elif self.with_macvlan:
            self.create_macvlan()
        for family in (4, 6):
            rules = self._router_json(family, ["rule", "show"])
            tables = self._router_json(family, ["route", "show", "table", "all"])
            main = self._router_json(family, ["route", "show", "table", "main"])
            self._router_batch(
                family,
                podstate.rule_deletions(rules, family)
                + podstate.extra_tables(tables)
                + podstate.route_deletions(main, family),
            )
        self._router_batch(
            None, [f"link set eth0 mtu {self.pod_mtu}", *self.wiring.router.lines(self.ipv6)]
        )
        write_sysctls(self.ns("router"), self._router_sysctls())

    def _router_sysctls(self) -> list[tuple[str, str]]:
        values = W.sysctls("router", self.rp_filter)
        # What the namespace's interfaces inherited when they were made (or moved) in.
        devices = ["eth0", *(["macvlan0"] if self.has_link("router", "macvlan0") else [])]
        return values + [(f"net/ipv4/conf/{dev}/rp_filter", str(self.rp_filter)) for dev in devices]

    def _router_json(self, family: int, args: list[str]) -> podstate.Listing:
        done = ip(["-n", self.ns("router"), f"-{family}", "-j", *args])
        listing: podstate.Listing = json.loads(done.stdout or "[]")
        return listing

    def _router_batch(self, family: int | None, lines: list[str]) -> None:
        if lines:
            script = "".join(f"{line}\n" for line in lines)
            flags = [f"-{family}"] if family else []
            ip(["-n", self.ns("router"), *flags, "-force", "-batch", "-"], script, check=False)

    # -- the pod network ----------------------------------------------------------------------

    @property
    def router_pod_ip(self) -> str:
        """The router pod's eth0 address (IPv4): what the Service's endpoint is."""
        return self.wiring.router.ip

    @property
    def router_pod_ip6(self) -> str:
        return self.wiring.router.ip6

    @property
    def client_ip(self) -> str:
        return self.wiring.client.ip

    @property
    def client_ip6(self) -> str:
        return self.wiring.client.ip6

    @property
    def cluster_ip(self) -> str:
        """The router's Service, DNATed to the router pod by the client's node."""
        return A.CLUSTER_IP

    @property
    def cluster_ip6(self) -> str:
        return A.CLUSTER_IP6

    @property
    def client_node(self) -> str:
        """The role of the client pod's node: "node" (node A), or "node_b" in per-node."""
        return self.wiring.client.node

    def address(self, via: str = "pod", ipv6: bool = False) -> str:
        """Where a client connects to reach the router: `via` "pod" (the router pod's eth0)
        or "clusterip" (its Service)."""
        if via == "pod":
            return self.router_pod_ip6 if ipv6 else self.router_pod_ip
        if via == "clusterip":
            return self.cluster_ip6 if ipv6 else self.cluster_ip
        raise ValueError(f"via must be pod or clusterip, not {via!r}")

    def nft(self, role: str, script: str) -> None:
        """Load an nftables script in the namespace of `role`."""
        self.exec(role, ["nft", "-f", "-"], input=script)

    def set_icmp_too_big_dropped(self, dropped: bool, on_nodes: bool = False) -> None:
        """Make the LAN gateway drop (or pass again) forwarded ICMP "fragmentation needed" and
        ICMPv6 "packet too big": a path MTU black hole between the router and the outside,
        which downloads meet. `on_nodes`: the nodes too, forwarded or their own, which uploads
        meet at the node whose pod veth is narrower (a pod network that filters ICMP)."""
        for role in ("gw", *self.wiring.nodes):
            self.exec(role, ["nft", "delete", "table", "inet", W.BLACKHOLE_TABLE], check=False)
            if dropped and (role == "gw" or on_nodes):
                self.nft(role, W.pmtu_blackhole())
        self.drop_icmp_too_big = dropped

    @contextlib.contextmanager
    def routed_through_router(self, destination: str) -> Iterator[None]:
        """Make the client's nodes send the client's packets for `destination` (an address)
        to the router pod's eth0 instead of the LAN, for the `with` block: to check that the
        router does not forward what it did not redirect (it is no open gateway)."""
        v6 = ":" in destination
        router = self.wiring.router
        hops = [(router.node, router.ip6 if v6 else router.ip, router.veth)]
        if self.client_node != router.node:
            hops.append((self.client_node, A.NODE_IP6 if v6 else A.NODE_IP, "nic0"))
        for role, gateway, dev in hops:
            ip(["-n", self.ns(role), "route", "replace", destination, "via", gateway, "dev", dev])
        try:
            yield
        finally:
            for role, gateway, _ in hops:
                ip(["-n", self.ns(role), "route", "del", destination, "via", gateway], check=False)

    def path_mtu(self, role: str, address: str, size: int = 1500) -> int:
        """The path MTU from `role` to `address` that a sender there learns by sending
        `size`-byte packets with "don't fragment" (e.g. to see the PMTU black hole)."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return learn_path_mtu(self.socket(role, family, socket.SOCK_DGRAM), address, size)

    def node_get(
        self, port: int, path: str = "/", ipv6: bool = False, timeout: float = 3.0
    ) -> HttpReply:
        """An HTTP GET from the router's node to the router pod's eth0 address, from the node's
        LAN address (192.0.2.10 / 2001:db8:1::10), as kubelet's probes come."""
        family = socket.AF_INET6 if ipv6 else socket.AF_INET
        source = A.NODE_IP6 if ipv6 else A.NODE_IP
        sock = self.socket("node", family)
        return http_get(sock, source, self.address("pod", ipv6), port, path, timeout)

    def client_get(self, port: int, path: str = "/", timeout: float = 3.0) -> HttpReply:
        """An HTTP GET from the client pod to the router pod's eth0 address."""
        return http_get(self.socket("client"), None, self.address("pod"), port, path, timeout)

    # -- interfaces ---------------------------------------------------------------------------

    def create_macvlan(self, name: str = "macvlan0") -> str:
        """Create a macvlan on node's nic0 (bridge mode) and move it into the router namespace
        as `name`, as the assign-macvlan annotation does on a real node; returns its MAC."""
        self._macvlans += 1
        temporary = f"mv{self._macvlans}"
        ip_batch(
            [
                f"link add {temporary} link nic0 type macvlan mode bridge",
                f"link set {temporary} netns {self.ns('router')}",
            ],
            self.ns("node"),
        )
        ip(["-n", self.ns("router"), "link", "set", temporary, "name", name])
        return self.mac("router", name)

    def restore_routes(self, role: str) -> None:
        """Put back the routes the wiring gives `role`: taking a link down (a test of a lost
        carrier) takes the routes through it with it, and up does not bring them back."""
        routes = [line.replace("route add", "route replace", 1) for line in W.namespace_setup(self.wiring, role, self.ipv6)
                  if line.startswith(("route ", "-6 route "))]
        ip(["-n", self.ns(role), "-force", "-batch", "-"], "".join(f"{x}\n" for x in routes), check=False)

    def delete_link(self, role: str, name: str) -> None:
        ip(["-n", self.ns(role), "link", "del", name], check=False)

    def has_link(self, role: str, name: str) -> bool:
        return ip(["-n", self.ns(role), "link", "show", "dev", name], check=False).returncode == 0

    def mac(self, role: str, name: str) -> str:
        done = ip(["-n", self.ns(role), "-o", "link", "show", "dev", name])
        words = done.stdout.split()
        return words[words.index("link/ether") + 1]

    # -- traffic ------------------------------------------------------------------------------

    def serve(
        self,
        endpoints: Iterable[tuple[str, int, str]],
        max_seconds: float = 3600,
        role: str = "ext",
    ) -> subprocess.Popen[str]:
        """Start reporting servers (lab/servers.py: tcp, udp, http, source, sink) in the
        namespace of `role`, ext by default; return once all of them listen."""
        specs = [format_spec(address, port, protocol) for address, port, protocol in endpoints]
        argv = [
            sys.executable,
            "-m",
            "egress_router.lab.servers",
            "--max-seconds",
            str(max_seconds),
            *specs,
        ]
        env = {**os.environ, "PYTHONPATH": SOURCE_ROOT}
        process = self.popen(
            role,
            argv,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 10)
        line = process.stdout.readline() if ready else ""
        if line.strip() != "ready":
            stop_process(process)
            err = process.stderr.read() if process.stderr else ""
            raise LabError(
                f"failed to start servers {' '.join(specs)}: {err.strip() or 'not ready in 10s'}"
            )
        return process

    def socket(
        self, role: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
    ) -> socket.socket:
        """A socket that lives in the namespace of `role` (its routes, its addresses)."""
        return in_netns(self.ns(role), lambda: socket.socket(family, kind))

    def connect(
        self,
        port: int,
        protocol: str = "tcp",
        address: str | None = None,
        timeout: float = 3.0,
        payload: bytes = b"",
        via: str = "pod",
        ipv6: bool = False,
    ) -> Probe:
        """Connect from the client to the router (`via` "pod": its eth0 address, "clusterip":
        its Service; `ipv6` picks the family) or to `address`, and report what the server at
        the other end saw."""
        target = address or self.address(via, ipv6)
        family = socket.AF_INET6 if ":" in target else socket.AF_INET
        if protocol == "tcp":
            return probe_tcp(
                self.socket("client", family, socket.SOCK_STREAM), target, port, timeout, payload
            )
        if protocol == "udp":
            return probe_udp(
                self.socket("client", family, socket.SOCK_DGRAM), target, port, timeout, payload
            )
        raise ValueError(f"the lab can probe tcp and udp, not {protocol!r}")

    def open_stream(
        self,
        port: int,
        address: str | None = None,
        timeout: float = 3.0,
        via: str = "pod",
        ipv6: bool = False,
    ) -> Stream:
        """A long-lived TCP connection from the client through the router; closed on teardown.
        Raises OSError if it cannot be opened."""
        target = address or self.address(via, ipv6)
        family = socket.AF_INET6 if ":" in target else socket.AF_INET
        stream = Stream(self.socket("client", family, socket.SOCK_STREAM), target, port, timeout)
        self._streams.append(stream)
        return stream

    def download(
        self,
        port: int,
        size: int,
        address: str | None = None,
        timeout: float = 10.0,
        via: str = "pod",
        ipv6: bool = False,
        role: str = "client",
    ) -> Transfer:
        """Ask a `source` server (see `serve`) for `size` bytes, from `role`, and count what
        arrives within `timeout`."""
        target = address or self.address(via, ipv6)
        family = socket.AF_INET6 if ":" in target else socket.AF_INET
        return download(self.socket(role, family), target, port, size, timeout)

    def upload(
        self,
        port: int,
        size: int,
        address: str | None = None,
        timeout: float = 10.0,
        via: str = "pod",
        ipv6: bool = False,
        role: str = "client",
    ) -> Transfer:
        """Send `size` bytes to a `sink` server, from `role`; the sink says how many it got."""
        target = address or self.address(via, ipv6)
        family = socket.AF_INET6 if ":" in target else socket.AF_INET
        return upload(self.socket(role, family), target, port, size, timeout)


def stop_process(process: subprocess.Popen[str], grace: float = 1.0) -> None:
    """Stop a process the lab started (its whole session: what it forked goes too)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(grace)
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()
