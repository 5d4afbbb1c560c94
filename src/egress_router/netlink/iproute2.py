"""`NetBackend` on the real kernel through iproute2's `ip`."""

from __future__ import annotations

import ipaddress
import json

from ..errors import ApplyError, SetupError
from ..model import IPInterface
from ..plan import NetworkPlan
from ..process import Completed, run
from . import LinkState, NetSnapshot, SavedRoute, batch_destination

IP_HINT = "install the iproute2 package in the image (apt-get install iproute2)"


class IpRoute2:
    def __init__(self, binary: str = "ip", proc_sys: str = "/proc/sys") -> None:
        self.binary = binary
        self.proc_sys = proc_sys

    def _run(self, args: list[str], stdin: str | None = None) -> Completed:
        try:
            return run([self.binary, *args], stdin)
        except FileNotFoundError:
            raise SetupError(f"the ip command was not found ({self.binary})", IP_HINT) from None

    def snapshot(self, name: str, families: tuple[int, ...], sysctls: tuple[str, ...]) -> NetSnapshot:
        # One process for the link and the IPv4 routes: this runs at every pod start.
        done = self._run(["-j", "-batch", "-"], f"address show dev {name}\nroute show\n")
        if done.returncode != 0:
            if "does not exist" in done.stderr:
                return NetSnapshot(None, (), ())
            raise ApplyError(f"read interface {name}", done.stderr)
        link_json, routes_json = (json.loads(line) for line in done.stdout.splitlines()[:2])
        routes = saved_routes(4, routes_json, name) if 4 in families else []
        if 6 in families:
            six = self._run(["-j", "-6", "route", "show"])
            routes += saved_routes(6, json.loads(six.stdout or "[]"), name)
        values = tuple((key, _read(f"{self.proc_sys}/{key}")) for key in sysctls)
        return NetSnapshot(parse_link(link_json[0]), tuple(routes), values)

    def restore(self, snapshot: NetSnapshot, plan: NetworkPlan) -> None:
        for key, value in snapshot.sysctls:
            if value is not None:
                self.set_sysctl(key, value)
        commands = restore_batch(snapshot, plan)
        # -force: go on past a line that fails and restore the rest. Deleting what is already
        # gone (the step that failed never added it) is not a failure of the restore.
        done = self._run(["-force", "-batch", "-"], "".join(f"{c}\n" for c in commands))
        failed = [commands[n - 1] for n in _failed_lines(done.stderr) if 0 < n <= len(commands)]
        if done.returncode != 0 and any(" del " not in f" {c} " for c in failed or commands):
            raise ApplyError("restore the previous network setup", done.stderr)

    def configure(self, plan: NetworkPlan, remove: tuple[IPInterface, ...]) -> None:
        commands = batch(plan, remove)
        done = self._run(["-batch", "-"], "".join(f"{c}\n" for c in commands))
        if done.returncode != 0:
            raise ApplyError(_failed_step(done.stderr, commands), done.stderr.strip().splitlines()[0] if done.stderr.strip() else "ip failed")

    def has_carrier(self, name: str) -> bool | None:
        # sysfs rather than another `ip` process; a macvlan's carrier is its parent's.
        value = _read(f"/sys/class/net/{name}/carrier")
        return None if value is None else value == "1"

    def set_sysctl(self, key: str, value: str) -> None:
        path = f"{self.proc_sys}/{key}"
        try:
            with open(path, "w") as handle:
                handle.write(value)
        except OSError as error:
            # /proc/sys is read-only in an unprivileged container. Fine if the value is already
            # right (a sysctl set in the Pod spec); an error naming the fix otherwise.
            if _read(path) == value:
                return
            name = key.replace("/", ".")
            raise ApplyError(
                f"set {name}={value}",
                f"{error.strerror or error}; allow it as a Pod sysctl "
                f"(securityContext.sysctls) or run the container privileged",
            ) from None


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def batch(plan: NetworkPlan, remove: tuple[IPInterface, ...]) -> list[str]:
    """The `ip -batch` lines for `plan`: replace-only verbs, so running them twice is harmless."""
    dev = plan.interface
    lines = [f"address del {a} dev {dev}" for a in remove]
    lines.append(f"link set dev {dev} up")
    for a in plan.addresses:
        # nodad: an IPv6 source must be usable at once, not after a second of duplicate
        # address detection (the announcement that follows tells the LAN instead).
        extra = " nodad" if a.version == 6 else ""
        lines.append(f"address replace {a} dev {dev}{extra}")
    for r in plan.routes:
        via = f" via {r.via}" if r.via is not None else ""
        # `ip -batch` takes no per-line options: the family follows from the addresses.
        lines.append(f"route replace {r.destination}{via} dev {dev}")
    return lines


def restore_batch(snapshot: NetSnapshot, plan: NetworkPlan) -> list[str]:
    """`ip -force -batch` lines that put back the addresses, routes and link state."""
    dev = plan.interface
    before = snapshot.link.addresses if snapshot.link else ()
    lines = [f"address del {a} dev {dev}" for a in plan.addresses if a not in before]
    lines += [f"address replace {a} dev {dev}" for a in before if a not in plan.addresses]
    families = {r.family for r in plan.routes}
    saved = [r for r in snapshot.routes if r.family in families]
    for r in plan.routes:
        if not any(s.destination == r.destination for s in saved if s.family == r.family):
            lines.append(f"route del {batch_destination(r.destination, r.family)} dev {dev}")
    # Removing an interface's last address takes its routes with it: put them all back.
    lines += [r.replace_command() for r in saved]
    if snapshot.link is not None and not snapshot.link.up:
        lines.append(f"link set dev {dev} down")
    return lines


def saved_routes(family: int, data: list[dict], interface: str) -> list[SavedRoute]:  # type: ignore[type-arg]
    """The routes a reconcile may change, from `ip -j route show`; the kernel's own routes
    for an address come back with the address."""
    return [
        SavedRoute(family, _prefixed(r["dst"], family), r.get("gateway"), r.get("dev"), r.get("scope"))
        for r in data
        if r.get("protocol") != "kernel" and (r.get("dst") == "default" or r.get("dev") == interface)
    ]


def _prefixed(destination: str, family: int) -> str:
    """`ip` shows a host route without its /32 or /128; the plan writes it with one. Spelled
    one way, the two compare equal."""
    if destination == "default" or "/" in destination:
        return destination
    return f"{destination}/{32 if family == 4 else 128}"


def _failed_lines(stderr: str) -> list[int]:
    """ip reports "Command failed -:N" for the Nth line of a batch that failed."""
    numbers = []
    for line in stderr.splitlines():
        if "Command failed -:" in line:
            tail = line.rsplit(":", 1)[1].strip()
            if tail.isdigit():
                numbers.append(int(tail))
    return numbers


def _failed_step(stderr: str, commands: list[str]) -> str:
    for n in _failed_lines(stderr):
        if 0 < n <= len(commands):
            return commands[n - 1]
    return "configure the egress interface"


def parse_link(data: dict) -> LinkState:  # type: ignore[type-arg]
    flags = data.get("flags", [])
    addresses = tuple(
        ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}")
        for a in data.get("addr_info", [])
        if a.get("scope") == "global" and "local" in a
    )
    return LinkState(
        name=data["ifname"],
        up="UP" in flags,
        carrier="LOWER_UP" in flags,
        mac=data.get("address", ""),
        mtu=int(data.get("mtu", 0)),
        addresses=addresses,
    )
