"""The macvlan interface, through iproute2 and util-linux's nsenter.

The link is created directly inside the pod's namespace (`ip link add ... netns PATH`): the
kernel looks the master up in the node's namespace and creates the macvlan in the pod's in one
step, so there is never a half-moved interface to clean up, and the name only has to be free in
the pod. Everything later runs in the pod's namespace through `nsenter --net=PATH`, which this
process never enters itself (Python 3.11 has no os.setns, and a process that switched
namespaces half-way through an error path is hard to reason about).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import LINK_FAILURE, CniError

# The kernel's macvlan modes, as `ip link add ... type macvlan mode M` names them.
MACVLAN_MODES = ("bridge", "private", "vepa", "passthru")
FORWARDING_SYSCTLS = ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding")


@dataclass(frozen=True)
class Link:
    name: str
    kind: str
    mode: str
    mac: str
    mtu: int
    up: bool


def run(argv: Sequence[str], netns: str | None = None, env: Mapping[str, str] | None = None,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    if netns is not None:
        argv = ["nsenter", f"--net={netns}", *argv]
    try:
        return subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False,
                              env=dict(env) if env is not None else None, timeout=60)
    except FileNotFoundError:
        raise CniError(LINK_FAILURE, f"failed to run {argv[0]}: not installed on this node") from None


def _check(done: subprocess.CompletedProcess[str], what: str) -> str:
    if done.returncode != 0:
        raise CniError(LINK_FAILURE, f"failed to {what}: {' '.join(done.stderr.split()) or 'no message'}")
    return done.stdout


def default_interface() -> str:
    """The node's default-route interface, the master the reference macvlan plugin picks too."""
    for family in ("-4", "-6"):
        routes = json.loads(_check(run(["ip", "-j", family, "route", "show", "default"]), "read the default route") or "[]")
        for route in routes:
            if route.get("dev"):
                return str(route["dev"])
    raise CniError(LINK_FAILURE, "failed to find the master interface: no default route on this node; set \"master\"")


def mtu_of(name: str) -> int:
    # Asked of the kernel rather than read from /sys/class/net, which shows the namespace that
    # sysfs was mounted for, not necessarily the one this process is in.
    done = run(["ip", "-j", "link", "show", "dev", name])
    if done.returncode != 0:
        raise CniError(LINK_FAILURE, f"failed to find master {name}: no such interface on this node")
    return int(json.loads(done.stdout)[0]["mtu"])


def create(master: str, netns: str, name: str, mode: str, mtu: int) -> None:
    argv = ["ip", "link", "add", "link", master, "name", name, "netns", netns, "mtu", str(mtu),
            "type", "macvlan", "mode", mode]
    _check(run(argv), f"create macvlan {name} on {master}")


def set_up(netns: str, name: str) -> None:
    _check(run(["ip", "link", "set", "dev", name, "up"], netns), f"set {name} up")


def show(netns: str, name: str) -> Link | None:
    done = run(["ip", "-j", "-d", "link", "show", "dev", name], netns)
    if done.returncode != 0:
        if "does not exist" in done.stderr or "Cannot find device" in done.stderr:
            return None
        _check(done, f"read interface {name}")
    data = json.loads(done.stdout)[0]
    info = data.get("linkinfo", {})
    return Link(name, str(info.get("info_kind", "")), str(info.get("info_data", {}).get("mode", "")),
                str(data.get("address", "")), int(data.get("mtu", 0)), "UP" in data.get("flags", []))


def delete(netns: str, name: str) -> None:
    """Remove the interface; nothing to do when it (or the namespace) is already gone."""
    if not os.path.exists(netns):
        return
    done = run(["ip", "link", "del", "dev", name], netns)
    if done.returncode != 0 and "Cannot find device" not in done.stderr and "does not exist" not in done.stderr:
        _check(done, f"delete {name}")


def enable_forwarding(netns: str, ifname: str) -> None:
    """What the router needs of /proc/sys, which is read-only in an unprivileged container:
    forwarding on, and loose reverse-path filtering on the interface (replies arrive on it from
    addresses the pod's main table routes elsewhere)."""
    # /proc/sys/net shows the namespace of the process that opens it: a shell entered into the
    # pod's namespace writes the pod's sysctl, not the node's. IPv6 may be off in the pod.
    values = [(key, "1") for key in FORWARDING_SYSCTLS] + [(f"net/ipv4/conf/{ifname}/rp_filter", "2")]
    for key, value in values:
        script = 'test ! -e "$1" || echo "$2" > "$1"'
        done = run(["sh", "-c", script, "sh", f"/proc/sys/{key}", value], netns)
        _check(done, f"set {key.replace('/', '.')}={value} in the pod")
