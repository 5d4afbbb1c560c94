"""Fixtures of the image tests: the image (built once per session with `make image`'s script),
and a lab whose LAN a podman macvlan network reaches.

    host ── podman internal network (the cluster side, eth0) ── pod ── macvlan0 ┄ veth ── br0 (lan) ── gw ── ext

The host is the client: it reaches the pod at its address on an `--internal` network (no NAT,
no way out of the host) in 198.51.100.128/25. The macvlan network's parent is an address-less
veth in the host namespace whose peer sits in the lab's LAN bridge: layer 2 only, leading
nowhere but the lab. Its IPv6 is off, so the host sends nothing into the lab by itself.
Everything has this run's prefix and is removed on teardown, also after a failure.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from egress_router.lab import Lab
from egress_router.lab.netns import ip
from egress_router.lab.probe import Probe, probe_tcp

from .podman import PREFIX, ROOT, names, podman, remove_all

SERVERS = [
    ("203.0.113.25", 80, "tcp"),
    ("203.0.113.25", 443, "tcp"),
    ("203.0.113.26", 80, "tcp"),
    ("203.0.113.26", 443, "tcp"),
    ("203.0.113.27", 5000, "tcp"),
]
# The cluster side: a documentation range the lab uses only inside namespaces, never on the
# host's own network (192.0.2.0/24 and 203.0.113.0/24 there). One /28 of it per run.
CLUSTER_RANGE = ipaddress.ip_network("198.51.100.128/25")


@pytest.fixture(scope="session")
def image() -> str:
    """Build (or reuse) localhost/egress-router:latest once per session."""
    started = time.monotonic()
    done = subprocess.run(
        [str(ROOT / "scripts" / "image" / "build.sh")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"make image failed: {done.stderr.strip()[-2000:]}"
    print(f"image built in {time.monotonic() - started:.1f}s: {done.stderr.strip()}")
    return "localhost/egress-router:latest"


@pytest.fixture(scope="session", autouse=True)
def no_podman_objects_left_behind(image: str) -> Iterator[None]:
    """After `image`, which installs podman on a fresh machine."""
    remove_all(prefix=None)  # what runs killed with SIGKILL left behind
    yield
    left = [n for kind in ("pod", "container", "volume", "network") for n in names(kind)]
    ours = [n for n in left if n.startswith(PREFIX)]
    remove_all()
    assert not ours, f"podman objects outlived their tests (now removed): {ours}"


def free_subnet() -> ipaddress.IPv4Network:
    """A /28 of CLUSTER_RANGE that no podman network and no host route uses."""
    taken = []
    for network in json.loads(podman(["network", "ls", "--format", "json"]).stdout or "[]"):
        for subnet in network.get("subnets") or []:
            taken.append(ipaddress.ip_network(subnet["subnet"]))
    for route in json.loads(ip(["-j", "-4", "route", "show", "table", "all"]).stdout or "[]"):
        if route.get("dst") not in (None, "default"):
            try:
                taken.append(ipaddress.ip_network(route["dst"], strict=False))
            except ValueError:
                pass
    for candidate in CLUSTER_RANGE.subnets(new_prefix=28):
        if not any(candidate.overlaps(t) for t in taken if t.version == 4):
            return candidate
    raise RuntimeError(f"no free /28 left in {CLUSTER_RANGE} for the cluster-side network")


class PodLab:
    """The lab plus the two podman networks a pod joins: `cluster` (eth0) and `lan`
    (macvlan0, no address: the router assigns the reserved one)."""

    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        self.cluster = f"{PREFIX}cluster"
        self.lan = f"{PREFIX}lan"
        # Short enough for the kernel's 15 characters; unique per run.
        self.parent = "er" + PREFIX.split("-")[2] + f"{os.getpid() % 1000:03d}"
        self.subnet = free_subnet()
        self.bridge = ""

    def build(self) -> None:
        lan_ns = self.lab.ns("lan")
        ip(["link", "add", self.parent, "type", "veth", "peer", "name", "pods0", "netns", lan_ns])
        with open(f"/proc/sys/net/ipv6/conf/{self.parent}/disable_ipv6", "w") as handle:
            handle.write("1")
        ip(["link", "set", self.parent, "up"])
        ip(["-n", lan_ns, "link", "set", "pods0", "master", "br0", "up"])
        # --gateway: podman gives an internal network's bridge no address of its own
        # otherwise, and the host, the client here, could not reach the pods.
        gateway = str(next(self.subnet.hosts()))
        podman(
            ["network", "create", "--internal", "--disable-dns", "--subnet", str(self.subnet),
             "--gateway", gateway, self.cluster]
        )
        found = json.loads(podman(["network", "inspect", self.cluster]).stdout)[0]
        self.bridge = str(found["network_interface"])
        podman(
            ["network", "create", "-d", "macvlan", "-o", f"parent={self.parent}",
             "--ipam-driver", "none", self.lan]
        )
        self._wait_forwarding("pods0")

    def destroy(self) -> None:
        remove_all()
        ip(["link", "del", self.parent], check=False)

    def _wait_forwarding(self, port: str, timeout: float = 5.0) -> None:
        # A new bridge port drops frames until the kernel's linkwatch marks it forwarding.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = ip(["-n", self.lab.ns("lan"), "-j", "-d", "link", "show", "dev", port]).stdout
            link = json.loads(out)[0]
            if link.get("linkinfo", {}).get("info_slave_data", {}).get("state") == "forwarding":
                return
            time.sleep(0.02)
        raise RuntimeError(f"bridge port {port} does not forward after {timeout}s")

    def networks(self, macvlan: bool = True) -> list[str]:
        """kube play's --network values: the cluster side first (eth0), then macvlan0."""
        nets = ["--network", self.cluster]
        if macvlan:
            nets += ["--network", f"{self.lan}:interface_name=macvlan0"]
        return nets

    def play(self, yaml_text: str, *args: str, macvlan: bool = True) -> None:
        path = self.workdir / f"play-{time.monotonic_ns()}.yaml"
        path.write_text(yaml_text)
        podman(["kube", "play", *self.networks(macvlan), *args, str(path)], timeout=180)

    def connect(self, pod: str, port: int, timeout: float = 3.0) -> Probe:
        """From the host (the client) to the pod's cluster-side address; what the server at
        the other end saw."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        return probe_tcp(sock, self.address(pod), port, timeout)

    def address(self, pod: str) -> str:
        """The pod's cluster-side address, once it is sure that the host's route to it is the
        internal network's bridge: nothing is ever sent towards the host's own network."""
        address = self.pod_ip(pod)
        route = json.loads(ip(["-j", "route", "get", address]).stdout)[0]
        assert route.get("dev") == self.bridge and "gateway" not in route, (
            f"the host's route to {address} is not the pod network's bridge: {route}"
        )
        return address

    def pod_ip(self, pod: str) -> str:
        infra = json.loads(podman(["pod", "inspect", pod]).stdout)
        infra_id = infra["InfraContainerID"] if isinstance(infra, dict) else infra[0]["InfraContainerID"]
        out = podman(["inspect", "--format", "{{json .NetworkSettings.Networks}}", infra_id]).stdout
        return str(json.loads(out)[self.cluster]["IPAddress"])


@pytest.fixture(scope="module")
def pod_lab(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodLab]:
    with Lab(macvlan=False) as lab:
        lab.serve(SERVERS)
        built = PodLab(lab, tmp_path_factory.mktemp("pods"))
        try:
            built.build()
            yield built
        finally:
            built.destroy()
