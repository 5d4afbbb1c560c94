"""`HaLab`: two router pods on two nodes sharing one reserved address (docs/ha.md, docs/lab.md).

    client ── node_c ─┐            cluster link (br1): the pod network between the nodes
    router_a ── node_a ┼── br1 ──┐
    router_b ── node_b ┘         │ (separate from the LAN)
    node_a nic0 ─┐
    node_b nic0 ─┴─ br0 (lan) ── gw ── ext
    router_a macvlan0 ┄ node_a nic0;  router_b macvlan0 ┄ node_b nic0

Each node routes the other nodes' pod subnets over the cluster link, so pod traffic between the
nodes never crosses the LAN: taking node A's LAN link (nic0, macvlan0's parent) down leaves the
pod network up, as on a real cluster whose LAN NIC and pod network are apart, and a standby can
still relay to the active. The client pod sits on a third node, so that a node's death does not
take the client with it.

Namespaces carry the same per-run prefix as `Lab` (lab/netns.py): the test session's sweep
and its check that nothing outlives it cover this lab too. Teardown kills every process the lab
started and deletes the namespaces, whatever the reason for leaving the `with` block.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from ..ha.settings import RUNTIME_DIR_VARIABLE
from ..neighbours import frames
from . import addresses as A
from .netns import in_netns, ip, ip_batch, write_sysctls
from .probe import HttpReply, Probe, http_get, probe_tcp
from .servers import format_spec
from .topology import SOURCE_ROOT, LabError, NamespaceLab

ROUTERS = ("a", "b")
ROLES = ("lan", "gw", "ext", "cluster", "node_a", "node_b", "node_c", "router_a", "router_b", "client")
VRID = 51
HTTP_PORT = 9090
SERVICE_PORT = 80  # the router's rule: 80 tcp 203.0.113.25
DESTINATION = "80 tcp 203.0.113.25\n"
DESTINATION6 = "80 tcp 2001:db8:2::25\n"  # the IPv6 twin, with dual-stack sources

# The pod network: one /26 per node, and the cluster link between the nodes.
PODS = {
    "a": ("node_a", "198.51.100.1", "198.51.100.2", "198.51.100.0/26", "198.51.100.193"),
    "b": ("node_b", "198.51.100.65", "198.51.100.66", "198.51.100.64/26", "198.51.100.194"),
    "c": ("node_c", "198.51.100.129", "198.51.100.130", "198.51.100.128/26", "198.51.100.195"),
}
# With `ipv6`: one /64 per node (the node's pod0 is ::1, its pod ::2) and the cluster link's.
PODS6 = {
    "a": ("2001:db8:3:a::1", "2001:db8:3:a::2", "2001:db8:3:a::/64", "2001:db8:3:f::a"),
    "b": ("2001:db8:3:b::1", "2001:db8:3:b::2", "2001:db8:3:b::/64", "2001:db8:3:f::b"),
    "c": ("2001:db8:3:d::1", "2001:db8:3:d::2", "2001:db8:3:d::/64", "2001:db8:3:f::d"),
}
NODE_LAN = {"node_a": A.NODE_IP, "node_b": A.NODE_B_IP}
CLIENT = "c"


def ha_env(ipv6: bool = False, **overrides: str) -> dict[str, str]:
    """The routers' environment; `ipv6`: dual-stack sources (IPv4 and IPv6 on the LAN)."""
    env = {
        "EGRESS_SOURCE": f"{A.SOURCE}/{A.LAN_PREFIX}" + (f",{A.SOURCE6}/{A.V6_PREFIX}" if ipv6 else ""),
        "EGRESS_GATEWAY": A.GATEWAY + (f",{A.GATEWAY6}" if ipv6 else ""),
        "EGRESS_DESTINATION": DESTINATION + (DESTINATION6 if ipv6 else ""),
        "EGRESS_ROUTER_MODE": "legacy",
        "EGRESS_ROUTER_HA": "vrrp",
        "EGRESS_ROUTER_VRRP_ID": str(VRID),
        # The drift check runs often here, so that a test sees its effect soon.
        "EGRESS_ROUTER_CHECK_EVERY": "1",
    }
    env.update(overrides)
    return env


class HaLab(NamespaceLab):
    def __init__(self, ipv6: bool = False) -> None:
        """`ipv6`: the LAN, the gateway, the outside and the pod network also speak IPv6
        (dual-stack sources; the pods get an IPv6 address too, `pod_ip6`)."""
        super().__init__()
        self.ipv6 = ipv6
        self.routers: dict[str, subprocess.Popen[str]] = {}
        self.logs: dict[str, str] = {}
        self._files: list[str] = []
        self.runtime = ""  # keepalived's files of the routers started here (a crash leaves them)

    def roles(self) -> Sequence[str]:
        return ROLES

    # -- life cycle ---------------------------------------------------------------------------

    def build(self) -> None:
        self._building()
        self.runtime = tempfile.mkdtemp(prefix="egress-ha-lab-")
        n = self.ns
        ip_batch([f"netns add {n(role)}" for role in ROLES])
        for role in ROLES:
            forward = "1" if role.startswith("node") or role == "gw" else "0"
            strict = "1" if role.startswith("router") else "0"
            v6 = self.ipv6
            write_sysctls(n(role), [
                ("net/ipv4/ip_forward", forward),
                ("net/ipv4/conf/all/rp_filter", strict),
                ("net/ipv4/conf/default/rp_filter", strict),
                ("net/ipv6/conf/all/disable_ipv6", "0" if v6 else "1"),
                ("net/ipv6/conf/default/disable_ipv6", "0" if v6 else "1"),
                ("net/ipv6/conf/all/accept_dad", "0"),
                ("net/ipv6/conf/default/accept_dad", "0"),
                ("net/ipv6/conf/all/forwarding", "1" if v6 and forward == "1" else "0"),
            ])
        links = [
            f"link add br0 netns {n('lan')} type bridge mcast_snooping 0",
            f"link add br1 netns {n('cluster')} type bridge mcast_snooping 0",
            f"link add lan0 netns {n('gw')} type veth peer name gw0 netns {n('lan')}",
            f"link add ext0 netns {n('gw')} type veth peer name eth0 netns {n('ext')}",
        ]
        for key, (node, _, _, _, _) in PODS.items():
            pod = "client" if key == CLIENT else f"router_{key}"
            links.append(f"link add eth0 netns {n(pod)} type veth peer name pod0 netns {n(node)}")
            links.append(f"link add clu0 netns {n(node)} type veth peer name {node} netns {n('cluster')}")
            if node in NODE_LAN:
                links.append(f"link add nic0 netns {n(node)} type veth peer name {node} netns {n('lan')}")
        ip_batch(links)
        self._configure()
        for key in ROUTERS:
            self.create_macvlan(key)
        self._wait_for_bridges()

    def _configure(self) -> None:
        batches: dict[str, list[str]] = {
            "gw": [
                "link set lo up",
                f"address add {A.GATEWAY}/{A.LAN_PREFIX} dev lan0", "link set lan0 up",
                f"address add {A.OUTSIDE_GATEWAY}/24 dev ext0", "link set ext0 up",
            ],
            "ext": [
                "link set lo up",
                *(f"address add {a}/24 dev eth0" for a in A.EXTERNAL),
                "link set eth0 up", f"route add default via {A.OUTSIDE_GATEWAY}",
            ],
            "lan": ["link set br0 up", *(f"link set {p} master br0 up" for p in ("gw0", "node_a", "node_b"))],
            "cluster": ["link set br1 up", *(f"link set {p} master br1 up" for p in ("node_a", "node_b", "node_c"))],
        }
        for key, (node, gateway, pod_ip, _subnet, cluster_ip) in PODS.items():
            lines = [
                "link set lo up",
                f"address add {gateway}/26 dev pod0", "link set pod0 up",
                f"address add {cluster_ip}/28 dev clu0", "link set clu0 up",
            ]
            for other, (_, _, _, other_subnet, other_cluster) in PODS.items():
                if other != key:
                    lines.append(f"route add {other_subnet} via {other_cluster} dev clu0")
            if node in NODE_LAN:
                lines += [f"address add {NODE_LAN[node]}/{A.LAN_PREFIX} dev nic0", "link set nic0 up"]
            batches[node] = lines
            pod = "client" if key == CLIENT else f"router_{key}"
            batches[pod] = [
                "link set lo up", f"address add {pod_ip}/26 dev eth0", "link set eth0 up",
                f"route add default via {gateway} dev eth0",
            ]
        if self.ipv6:
            for key, (gateway6, pod_ip6, _subnet6, cluster_ip6) in PODS6.items():
                node = PODS[key][0]
                batches[node] += [f"address add {gateway6}/64 dev pod0 nodad",
                                  f"address add {cluster_ip6}/64 dev clu0 nodad"]
                batches[node] += [f"route add {other[2]} via {other[3]} dev clu0"
                                  for other_key, other in PODS6.items() if other_key != key]
                pod = "client" if key == CLIENT else f"router_{key}"
                batches[pod] += [f"address add {pod_ip6}/64 dev eth0 nodad",
                                 f"route add default via {gateway6} dev eth0"]
            batches["gw"] += [f"address add {A.GATEWAY6}/{A.V6_PREFIX} dev lan0 nodad",
                              f"address add {A.OUTSIDE_GATEWAY6}/{A.V6_PREFIX} dev ext0 nodad"]
            batches["ext"] += [*(f"address add {a}/{A.V6_PREFIX} dev eth0 nodad" for a in A.EXTERNAL6),
                               f"route add default via {A.OUTSIDE_GATEWAY6}"]
        for role, lines in batches.items():
            ip(["-n", self.ns(role), "-batch", "-"], "".join(f"{line}\n" for line in lines))

    def create_macvlan(self, key: str) -> None:
        node, pod = f"node_{key}", f"router_{key}"
        ip_batch([
            f"link add mv{key} link nic0 type macvlan mode bridge",
            f"link set mv{key} netns {self.ns(pod)}",
        ], self.ns(node))
        ip(["-n", self.ns(pod), "link", "set", f"mv{key}", "name", "macvlan0"])
        write_sysctls(self.ns(pod), [("net/ipv4/conf/macvlan0/rp_filter", "1")])

    def _wait_for_bridges(self, timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        for role, bridge in (("lan", "br0"), ("cluster", "br1")):
            while True:
                done = ip(["-n", self.ns(role), "-j", "-d", "link", "show", "master", bridge])
                states = [link.get("linkinfo", {}).get("info_slave_data", {}).get("state")
                          for link in json.loads(done.stdout)]
                if states and all(s == "forwarding" for s in states):
                    break
                if time.monotonic() > deadline:
                    raise LabError(f"the {bridge} ports do not forward after {timeout}s: {states}")
                time.sleep(0.01)

    def _tear_down(self) -> None:
        for path in self._files:
            try:
                os.unlink(path)
            except OSError:
                pass
        shutil.rmtree(self.runtime, ignore_errors=True)

    # -- processes ----------------------------------------------------------------------------

    def serve(self, more: Iterable[tuple[str, int, str]] = (), max_seconds: float = 1800) -> None:
        """The outside server on 203.0.113.25 port 80 (and its IPv6 twin with `ipv6`), and
        the endpoints `more` (address, port, protocol)."""
        argv = [sys.executable, "-m", "egress_router.lab.servers", "--max-seconds", str(max_seconds),
                format_spec(A.EXTERNAL[0], SERVICE_PORT, "tcp"),
                *(format_spec(address, port, protocol) for address, port, protocol in more)]
        if self.ipv6:
            argv.append(format_spec(A.EXTERNAL6[0], SERVICE_PORT, "tcp"))
        process = self.popen("ext", argv, {**os.environ, "PYTHONPATH": SOURCE_ROOT},
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 10)
        if not ready or process.stdout.readline().strip() != "ready":
            raise LabError("the external server did not start")

    def start_router(self, key: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
        """Start router `key` (a or b) in legacy HA mode; its log goes to a file (`log`)."""
        handle, path = tempfile.mkstemp(prefix=f"egress-ha-{key}-", suffix=".log")
        self._files.append(path)
        self.logs[key] = path
        full = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                "PYTHONPATH": SOURCE_ROOT, RUNTIME_DIR_VARIABLE: self.runtime,
                **(env if env is not None else ha_env())}
        with os.fdopen(handle, "w") as out:
            process = self.popen(f"router_{key}", [sys.executable, "-m", "egress_router"], full,
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        self.routers[key] = process
        return process

    def log(self, key: str) -> str:
        try:
            with open(self.logs[key]) as handle:
                return handle.read()
        except (KeyError, OSError):
            return ""

    def crash(self, key: str, only_router: bool = False) -> None:
        """SIGKILL every process of router `key` (the router and its keepalived), or with
        `only_router` the router's own process alone."""
        process = self.routers[key]
        try:
            if only_router:
                os.kill(self.router_pid(key), 9)
            else:
                os.killpg(process.pid, 9)
        except ProcessLookupError:
            pass
        if not only_router:
            process.wait(5)

    def router_pid(self, key: str) -> int:
        """The router's own pid (`ip netns exec` execs it: the same process)."""
        return self.routers[key].pid

    def keepalived_pid(self, key: str) -> int | None:
        """The pid of the keepalived that router `key` started (its child), if any."""
        done = ip(["netns", "pids", self.ns(f"router_{key}")], check=False)
        for pid in done.stdout.split():
            try:
                with open(f"/proc/{pid}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{pid}/comm") as handle:
                    name = handle.read().strip()
            except OSError:
                continue
            if name == "keepalived" and int(fields[1]) == self.router_pid(key):
                return int(pid)
        return None

    def processes(self, key: str) -> list[str]:
        """The command names of the processes left in router `key`'s namespace."""
        done = ip(["netns", "pids", self.ns(f"router_{key}")], check=False)
        names = []
        for pid in done.stdout.split():
            try:
                with open(f"/proc/{pid}/comm") as handle:
                    names.append(handle.read().strip())
            except OSError:
                continue
        return names

    def terminate(self, key: str) -> int:
        """SIGTERM to the router itself, as kubelet stops a container; its exit status."""
        process = self.routers[key]
        process.send_signal(15)
        return process.wait(10)

    def node_death(self, key: str) -> None:
        """Node `key` dies: its router's processes, the router's macvlan0, and the node's own
        interfaces (LAN, cluster link, the pod's veth) are gone."""
        self.crash(key)
        node = f"node_{key}"
        ip(["-n", self.ns(f"router_{key}"), "link", "del", "macvlan0"], check=False)
        for link in ("nic0", "clu0", "pod0"):
            ip(["-n", self.ns(node), "link", "del", link], check=False)

    def set_lan_link(self, key: str, up: bool) -> None:
        """Node `key`'s LAN link (macvlan0's parent) down or up; the pod network stays."""
        ip(["-n", self.ns(f"node_{key}"), "link", "set", "nic0", "up" if up else "down"])

    # -- what the lab sees --------------------------------------------------------------------

    def holds(self, key: str) -> bool:
        """Whether router `key` has the reserved address on macvlan0."""
        return self._holds(key, A.SOURCE)

    def holds6(self, key: str) -> bool:
        """Whether router `key` has the reserved IPv6 address on macvlan0."""
        return self._holds(key, A.SOURCE6)

    def _holds(self, key: str, address: str) -> bool:
        family = "-6" if ":" in address else "-4"
        done = ip(["-n", self.ns(f"router_{key}"), "-j", family, "address", "show", "dev", "macvlan0"], check=False)
        if done.returncode != 0:
            return False
        return any(a.get("local") == address for link in json.loads(done.stdout or "[]")
                   for a in link.get("addr_info", []))

    def nd_answers(self, wait: float = 0.3) -> set[str]:
        """The MACs that answer a neighbour solicitation for the reserved IPv6 address, asked
        from the LAN's gateway."""
        target = socket.inet_pton(socket.AF_INET6, A.SOURCE6)

        def ask() -> set[str]:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x86DD))
            try:
                sock.bind(("lan0", 0))
                sock.send(frames.neighbour_probe(sock.getsockname()[4], target))
                return _claims(sock, target, wait)
            finally:
                sock.close()

        return in_netns(self.ns("gw"), ask)

    def gateway_sends6(self) -> None:
        """One UDP datagram from the gateway to the reserved IPv6 address: the gateway resolves
        it (a neighbour entry, which an unsolicited NA later updates but never creates)."""

        def send() -> None:
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
                sock.sendto(b"x", (A.SOURCE6, 9))

        in_netns(self.ns("gw"), send)

    def gateway_neighbour6(self) -> str | None:
        """The MAC the LAN's gateway has for the reserved IPv6 address (None: no usable entry)."""
        return self._gateway_neighbour(A.SOURCE6)

    def holders(self) -> list[str]:
        return [key for key in ROUTERS if self.holds(key)]

    def mac(self, key: str) -> str | None:
        done = ip(["-n", self.ns(f"router_{key}"), "-j", "link", "show", "dev", "macvlan0"], check=False)
        if done.returncode != 0:
            return None
        links = json.loads(done.stdout or "[]")
        return str(links[0]["address"]) if links else None

    def arp_answers(self, wait: float = 0.3) -> set[str]:
        """The MACs that answer an ARP request for the reserved address, asked from the LAN's
        gateway."""
        target = socket.inet_aton(A.SOURCE)

        def ask() -> set[str]:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
            try:
                sock.bind(("lan0", 0))
                mac = sock.getsockname()[4]
                sock.send(frames.arp(1, mac, socket.inet_aton(A.GATEWAY), frames.NO_MAC, target))
                return _claims(sock, target, wait)
            finally:
                sock.close()

        return in_netns(self.ns("gw"), ask)

    def gateway_neighbour(self) -> str | None:
        """The MAC the LAN's gateway has for the reserved address (None: no usable entry)."""
        return self._gateway_neighbour(A.SOURCE)

    def _gateway_neighbour(self, address: str) -> str | None:
        family = "-6" if ":" in address else "-4"
        done = ip(["-n", self.ns("gw"), family, "-j", "neigh", "show", address, "dev", "lan0"], check=False)
        for entry in json.loads(done.stdout or "[]"):
            if "lladdr" in entry and "FAILED" not in entry.get("state", []):
                return str(entry["lladdr"])
        return None

    def pod_ip(self, key: str) -> str:
        return PODS[key][2]

    def pod_ip6(self, key: str) -> str:
        """Router `key`'s IPv6 pod address (with `ipv6`)."""
        return PODS6[key][1]

    def connect(self, key: str, timeout: float = 2.0, port: int = SERVICE_PORT, ipv6: bool = False) -> Probe:
        """A new TCP connection from the client pod to router `key`'s pod address (`ipv6`:
        to its IPv6 pod address)."""
        family = socket.AF_INET6 if ipv6 else socket.AF_INET
        sock = in_netns(self.ns("client"), lambda: socket.socket(family, socket.SOCK_STREAM))
        return probe_tcp(sock, self.pod_ip6(key) if ipv6 else self.pod_ip(key), port, timeout, b"")

    def ready(self, key: str) -> HttpReply:
        """/readyz of router `key`, asked from its node as kubelet does."""
        node, gateway = PODS[key][0], PODS[key][1]
        sock = in_netns(self.ns(node), lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        return http_get(sock, gateway, self.pod_ip(key), HTTP_PORT, "/readyz", 1.0)

    def is_ready(self, key: str) -> bool:
        try:
            return self.ready(key).status == 200
        except OSError:
            return False

    def metrics(self, key: str) -> str:
        node, gateway = PODS[key][0], PODS[key][1]
        sock = in_netns(self.ns(node), lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        return http_get(sock, gateway, self.pod_ip(key), HTTP_PORT, "/metrics", 2.0).body

    def status(self, key: str) -> str:
        done = subprocess.run(
            ["ip", "netns", "exec", self.ns(f"router_{key}"), sys.executable, "-m", "egress_router", "status"],
            capture_output=True, text=True, timeout=10,
            env={**os.environ, "PYTHONPATH": SOURCE_ROOT, "EGRESS_ROUTER_HA": "vrrp"},
        )
        return done.stdout + done.stderr

    def time_to_egress(self, key: str, since: float, limit: float = 10.0, attempt: float = 0.2) -> float | None:
        """Seconds from `since` (time.monotonic) until a new connection through router `key`
        reaches the outside server from the reserved address, router `key` holding it (a
        standby relaying to a crashed active whose kernel still forwards does not count);
        None if not within `limit`."""
        while time.monotonic() - since < limit:
            if not self.holds(key):
                time.sleep(0.01)
                continue
            probe = self.connect(key, timeout=attempt)
            if probe.ok and probe.source == A.SOURCE:
                return time.monotonic() - since
            if not probe.ok and probe.error != "timeout":
                time.sleep(0.02)  # refused or unreachable: answered at once, try again soon
        return None


def _claims(sock: socket.socket, target: bytes, wait: float) -> set[str]:
    """The MACs of the answers (ARP replies, neighbour advertisements) for `target` that
    arrive on `sock` within `wait` seconds."""
    found: set[str] = set()
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            break
        said = frames.claim(sock.recv(2048))
        if said is not None and said[0] and said[2] == target:
            found.add(frames.mac_text(said[1]))
    return found


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def one_holder(lab: HaLab, keys: Iterable[str] = ROUTERS) -> str | None:
    held = [key for key in keys if lab.holds(key)]
    return held[0] if len(held) == 1 else None
