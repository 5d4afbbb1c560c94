"""The lab with real pods: the built image under podman, its macvlan0 on the lab's LAN.

    host ── internal podman network (eth0) ── pod ── macvlan0 ┄ veth ── br0 (lan) ── gw ── ext

The host is the client: it reaches a pod at its address on an `--internal` network (no NAT,
no way out of the host) in 198.51.100.128/25, whose bridge is the host's only new address.
The macvlan network's parent is an address-less veth in the host namespace whose peer sits in
the lab's LAN bridge: layer 2 only, leading nowhere but the lab; its IPv6 is off, so the host
sends nothing into the lab by itself. Before any connection, `address` checks that the host's
route to the pod is that bridge, so nothing is ever sent towards the host's own network.

podman runs with the project's containers.conf (scripts/image/env.sh sets the same variable
for the scripts). Every podman object is named with one prefix per process and removed by
`destroy`; `remove_all(None)` removes what dead runs left. Used by tests/image, the pod demo
(`make pod-demo`) and the time-to-ready benchmark. Needs root, and the image (`make image`).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from . import addresses as A
from .netns import ip
from .probe import Probe, probe_tcp
from .topology import SOURCE_ROOT, Lab

ROOT = Path(SOURCE_ROOT).parent
CONTAINERS_CONF = ROOT / "scripts" / "image" / "containers.conf"
BUILD_SCRIPT = ROOT / "scripts" / "image" / "build.sh"
IMAGE = "localhost/egress-router:latest"
EXAMPLES = ROOT / "examples"
# "eri-<pid>-<4 hex>-": the pid tells a dead run's leftovers from those of a live one.
PREFIX = f"eri-{os.getpid()}-{secrets.token_hex(2)}-"
PREFIX_PATTERN = re.compile(r"^eri-(\d+)-[0-9a-f]{4}-")
KINDS = ("pod", "container", "volume", "network")
# The cluster side: a documentation range the lab uses only inside namespaces, never on the
# host's own network (192.0.2.0/24 and 203.0.113.0/24 on the machines this was written on).
CLUSTER_RANGE = ipaddress.IPv4Network("198.51.100.128/25")
SERVERS = [
    ("203.0.113.25", 80, "tcp"),
    ("203.0.113.25", 443, "tcp"),
    ("203.0.113.26", 80, "tcp"),
    ("203.0.113.26", 443, "tcp"),
    ("203.0.113.27", 5000, "tcp"),
]
# podman 4.3 runs a "once" init container (its default) only after a 20-27 s delay, and
# restarts a finished one forever unless the pod never restarts: "always" with Never.
INIT_TYPE = "io.podman.annotations.init.container.type"
# The seed's values on a real LAN, and what stands for them in the lab.
LAB_VALUES = {
    "192.168.12.99/24": f"{A.SOURCE}/{A.LAN_PREFIX}",
    "192.168.12.1": A.GATEWAY,
    # egress-1's placeholders: its own reserved address (without a prefix length: only the
    # gateway is then reachable on the LAN) and the seed's example destination.
    "<egress_router>": "192.0.2.98",
    "<egress_gateway>": A.GATEWAY,
    "<egress_destination>": "203.0.113.25",
}


class PodmanError(RuntimeError):
    """A podman command failed; the message has podman's own words."""


def podman(
    args: Sequence[str], check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)},
        check=False,
    )
    if check and done.returncode != 0:
        raise PodmanError(f"podman {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def build_image() -> str:
    """`make image`'s script (it reuses what is built); its one-line report."""
    done = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise PodmanError(f"make image failed: {done.stderr.strip()[-2000:]}")
    return done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""


def names(kind: str) -> list[str]:
    """Names of every pod, container, volume or network podman knows."""
    args = {
        "pod": ["pod", "ps", "--format", "{{.Name}}"],
        "container": ["ps", "-a", "--format", "{{.Names}}"],
        "volume": ["volume", "ls", "--format", "{{.Name}}"],
        "network": ["network", "ls", "--format", "{{.Name}}"],
    }[kind]
    return podman(args).stdout.split()


def _dead_run(name: str) -> bool:
    match = PREFIX_PATTERN.match(name)
    if not match:
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


def remove_all(prefix: str | None = PREFIX) -> list[str]:
    """Remove the pods, containers, volumes and networks named with `prefix` (None: those of
    dead runs); return their names."""
    removed = []
    for kind, rm in zip(
        KINDS,
        (
            ["pod", "rm", "-f", "-t", "0"],
            ["rm", "-f", "-t", "0"],
            ["volume", "rm", "-f"],
            ["network", "rm", "-f"],
        ),
        strict=True,
    ):
        found = [
            n for n in names(kind) if (n.startswith(prefix) if prefix else _dead_run(n))
        ]
        if found:
            podman([*rm, *found], check=False)
            removed += found
    return removed


def leftovers(prefix: str = PREFIX) -> list[str]:
    return [n for kind in KINDS for n in names(kind) if n.startswith(prefix)]


def inspect(name: str) -> dict[str, Any]:
    found = json.loads(podman(["inspect", name]).stdout)
    if not isinstance(found, list) or not found or not isinstance(found[0], dict):
        raise PodmanError(f"podman inspect {name}: nothing found")
    return found[0]


def state(container: str) -> tuple[str, int]:
    """(status, exit code) of a container."""
    found = inspect(container)["State"]
    return str(found["Status"]), int(found["ExitCode"])


def container_logs(name: str) -> str:
    done = podman(["logs", name], check=False)
    return done.stdout + done.stderr


# -- Pod specs ---------------------------------------------------------------------------------


def seed_pod(example: str) -> dict[str, Any]:
    """One of the seed's Pods, from examples/ (`seed-egress-1.yaml`, `seed-egress-multi.yaml`)."""
    import yaml

    doc = yaml.safe_load((EXAMPLES / example).read_text())
    if not isinstance(doc, dict):
        raise TypeError(f"{example}: not a Pod")
    return doc


def for_podman(pod: dict[str, Any], image: str = IMAGE) -> dict[str, Any]:
    """The only changes the seed's Pod needs here: this run's name, the image, the lab's
    addresses, podman 4.3's init container settings, and a wait container that runs here (the
    router image, sleeping: the seed's ose-pod cannot be pulled)."""
    meta = pod["metadata"]
    meta["name"] = PREFIX + meta["name"]
    meta.setdefault("annotations", {})[INIT_TYPE] = "always"
    spec = pod["spec"]
    spec["restartPolicy"] = "Never"
    for container in spec.get("initContainers", []) + spec["containers"]:
        container["image"] = image
        for var in container.get("env", []):
            if "value" in var:
                var["value"] = LAB_VALUES.get(var["value"], var["value"])
    for container in spec["containers"]:
        if container["name"] == "egress-router-wait":
            container["command"] = ["sleep", "infinity"]
    return pod


def legacy_pod(name: str, image: str = IMAGE) -> tuple[dict[str, Any], dict[str, Any]]:
    """(ConfigMap, Pod) as `egress-router manifests --mode legacy` writes them for the lab,
    named `PREFIX + name`, with restartPolicy Never (podman restarts an exited container
    forever otherwise). Two rules: 80/tcp to 203.0.113.25, 8080/tcp to 203.0.113.26:80."""
    import sys

    import yaml

    done = subprocess.run(
        [sys.executable, "-m", "egress_router", "manifests", "--mode", "legacy",
         "--image", image, "--name", PREFIX + name,
         "--source", LAB_VALUES["192.168.12.99/24"], "--gateway", A.GATEWAY,
         "--destination", "80 tcp 203.0.113.25", "--destination", "8080 tcp 203.0.113.26 80"],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": SOURCE_ROOT},
    )
    by_kind = {doc["kind"]: doc for doc in yaml.safe_load_all(done.stdout) if doc}
    pod = by_kind["Pod"]
    pod["spec"]["restartPolicy"] = "Never"
    return by_kind["ConfigMap"], pod


def dump(*docs: dict[str, Any]) -> str:
    """YAML as people write it: multi-line values (the rules) as `|` blocks."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump_all(docs, Dumper=Dumper, sort_keys=False)


# -- the lab with pods ---------------------------------------------------------------------------


class PodLab:
    """A `Lab` (without a macvlan of its own) plus the two podman networks a pod joins:
    `cluster` (eth0) and `lan` (macvlan0, no address: the router assigns the reserved one)."""

    def __init__(self, workdir: Path, servers: Sequence[tuple[str, int, str]] = SERVERS) -> None:
        self.lab = Lab(macvlan=False)
        self.workdir = workdir
        self.servers = list(servers)
        self.cluster = f"{PREFIX}cluster"
        self.lan = f"{PREFIX}lan"
        # Unique per run and within the kernel's 15 characters.
        self.parent = f"er{PREFIX.split('-')[2]}{os.getpid() % 1000:03d}"
        self.bridge = ""
        self._ips: dict[str, str] = {}

    def __enter__(self) -> Self:
        try:
            self.build()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def build(self) -> None:
        self.lab.build()
        self.lab.serve(self.servers)
        lan_ns = self.lab.ns("lan")
        ip(["link", "add", self.parent, "type", "veth", "peer", "name", "pods0", "netns", lan_ns])
        with open(f"/proc/sys/net/ipv6/conf/{self.parent}/disable_ipv6", "w") as handle:
            handle.write("1")
        ip(["link", "set", self.parent, "up"])
        ip(["-n", lan_ns, "link", "set", "pods0", "master", "br0", "up"])
        self._create_cluster_network()
        podman(
            ["network", "create", "-d", "macvlan", "-o", f"parent={self.parent}",
             "--ipam-driver", "none", self.lan]
        )
        self._wait_forwarding("pods0")

    def destroy(self) -> None:
        try:
            remove_all()
        finally:
            ip(["link", "del", self.parent], check=False)
            self.lab.destroy()

    def _create_cluster_network(self) -> None:
        # --gateway: podman gives an internal network's bridge no address of its own
        # otherwise, and the host, the client here, could not reach the pods. The first /28
        # that neither podman nor the host uses; a parallel run may take it first.
        for subnet in free_subnets():
            gateway = str(next(subnet.hosts()))
            done = podman(
                ["network", "create", "--internal", "--disable-dns", "--subnet", str(subnet),
                 "--gateway", gateway, self.cluster],
                check=False,
            )
            if done.returncode == 0:
                found = json.loads(podman(["network", "inspect", self.cluster]).stdout)[0]
                self.bridge = str(found["network_interface"])
                return
        raise PodmanError(f"no free /28 in {CLUSTER_RANGE} for the cluster-side network")

    def _wait_forwarding(self, port: str, timeout: float = 5.0) -> None:
        # A new bridge port drops frames until the kernel's linkwatch marks it forwarding.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = ip(["-n", self.lab.ns("lan"), "-j", "-d", "link", "show", "dev", port]).stdout
            link = json.loads(out)[0]
            if link.get("linkinfo", {}).get("info_slave_data", {}).get("state") == "forwarding":
                return
            time.sleep(0.02)
        raise PodmanError(f"bridge port {port} does not forward after {timeout}s")

    # -- pods -----------------------------------------------------------------------------------

    def networks(self, macvlan: bool = True) -> list[str]:
        """podman's --network options: the cluster side first (eth0), then macvlan0."""
        nets = ["--network", self.cluster]
        if macvlan:
            nets += ["--network", f"{self.lan}:interface_name=macvlan0"]
        return nets

    def play(self, yaml_text: str, *args: str, macvlan: bool = True) -> None:
        """`podman kube play` the YAML on this lab's networks (raises PodmanError)."""
        path = self.workdir / f"play-{time.monotonic_ns()}.yaml"
        path.write_text(yaml_text)
        podman(["kube", "play", *self.networks(macvlan), *args, str(path)], timeout=180)

    def pod_ip(self, pod: str) -> str:
        infra = inspect_pod(pod)["InfraContainerID"]
        out = podman(["inspect", "--format", "{{json .NetworkSettings.Networks}}", infra]).stdout
        return str(json.loads(out)[self.cluster]["IPAddress"])

    def address(self, pod: str) -> str:
        """The pod's cluster-side address, once it is sure that the host's route to it is the
        internal network's bridge: nothing is ever sent towards the host's own network."""
        address = self.pod_ip(pod)
        route = json.loads(ip(["-j", "route", "get", address]).stdout)[0]
        if route.get("dev") != self.bridge or "gateway" in route:
            raise PodmanError(f"the host's route to {address} is not the pod bridge: {route}")
        return address

    def connect(self, pod: str, port: int, timeout: float = 3.0) -> Probe:
        """From the host (the client) to the pod; what the server at the other end saw."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        return probe_tcp(sock, self.address(pod), port, timeout)


def inspect_pod(pod: str) -> dict[str, Any]:
    found = json.loads(podman(["pod", "inspect", pod]).stdout)
    item = found[0] if isinstance(found, list) else found
    if not isinstance(item, dict):
        raise PodmanError(f"podman pod inspect {pod}: nothing found")
    return item


def free_subnets() -> list[ipaddress.IPv4Network]:
    """The /28s of CLUSTER_RANGE that no podman network and no host route uses."""
    taken: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for network in json.loads(podman(["network", "ls", "--format", "json"]).stdout or "[]"):
        for subnet in network.get("subnets") or []:
            taken.append(ipaddress.ip_network(subnet["subnet"]))
    for route in json.loads(ip(["-j", "-4", "route", "show", "table", "all"]).stdout or "[]"):
        if route.get("dst") not in (None, "default"):
            try:
                taken.append(ipaddress.ip_network(route["dst"], strict=False))
            except ValueError:
                pass
    v4 = [t for t in taken if isinstance(t, ipaddress.IPv4Network)]
    return [c for c in CLUSTER_RANGE.subnets(new_prefix=28) if not any(c.overlaps(t) for t in v4)]
