"""`NetBackend` on the real kernel, over rtnetlink: no `ip` process.

A pod start used to run `ip` twice (to read the interface and routes, then to change them):
two processes and a JSON parser, about 5 ms of a 45 ms start. The same reads are three dumps
on one NETLINK_ROUTE socket and the changes one acknowledged message each, sent in the order
`setup_steps` gives, stopping at the first the kernel refuses, as `ip -batch` did.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from .. import netlink
from ..errors import ApplyError, Kind
from ..model import IPInterface
from ..netlink import NLM_F_CREATE, NLM_F_REPLACE, NetlinkError
from ..plan import NetworkPlan
from . import LinkState, NetSnapshot, SavedRoute, Step, restore_steps, setup_steps

RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU = 1, 3, 4
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_NODAD = 0x02
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15
RT_TABLE_MAIN = 254
RTPROT_KERNEL, RTPROT_BOOT = 2, 3
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
SCOPES = {"global": 0, "site": 200, "link": 253, "host": 254}
SCOPE_NAMES = {value: name for name, value in SCOPES.items() if value}

FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
VERSION = {socket.AF_INET: 4, socket.AF_INET6: 6}

IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
U32 = struct.Struct("=I")


class RtNetlink:
    def __init__(self, proc_sys: str = "/proc/sys") -> None:
        self.proc_sys = proc_sys
        self.channel = netlink.Channel(netlink.NETLINK_ROUTE)

    # --- reading -----------------------------------------------------------------------------

    def snapshot(self, name: str, families: tuple[int, ...], sysctls: tuple[str, ...]) -> NetSnapshot:
        try:
            index = socket.if_nametoindex(name)
        except OSError:
            return NetSnapshot(None, (), ())
        try:
            names, link = self._links(index)
            addresses = self._addresses(index)
            routes = [r for family in families for r in self._routes(family, names, index)]
        except OSError as error:
            raise ApplyError(f"read interface {name}", _words(error)) from None
        if link is None:  # gone between the two reads
            return NetSnapshot(None, (), ())
        values = tuple((key, _read(f"{self.proc_sys}/{key}")) for key in sysctls)
        return NetSnapshot(link._replace(addresses=addresses), tuple(routes), values)

    def _links(self, index: int) -> tuple[dict[int, str], LinkState | None]:
        """Every link's name by index (routes name their device by index), and the one link."""
        names: dict[int, str] = {}
        link = None
        for _, data, start, end in self.channel.dump(RTM_GETLINK, IFINFOMSG.pack(0, 0, 0, 0, 0)):
            _, _, number, flags, _ = IFINFOMSG.unpack_from(data, start)
            found = netlink.attributes(data, start + IFINFOMSG.size, end)
            name = found.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace")
            names[number] = name
            if number == index:
                mac = ":".join(f"{b:02x}" for b in found.get(IFLA_ADDRESS, b""))
                mtu = U32.unpack(found[IFLA_MTU])[0] if IFLA_MTU in found else 0
                link = LinkState(name, bool(flags & IFF_UP), bool(flags & IFF_LOWER_UP), mac, mtu, ())
        return names, link

    def _addresses(self, index: int) -> tuple[IPInterface, ...]:
        """The link's addresses of global scope (link-local ones are the kernel's own)."""
        out = []
        for _, data, start, end in self.channel.dump(RTM_GETADDR, IFADDRMSG.pack(0, 0, 0, 0, 0)):
            family, prefix, _, scope, number = IFADDRMSG.unpack_from(data, start)
            if number != index or scope != RT_SCOPE_UNIVERSE or family not in VERSION:
                continue
            found = netlink.attributes(data, start + IFADDRMSG.size, end)
            raw = found.get(IFA_LOCAL) or found.get(IFA_ADDRESS)
            if raw:
                out.append(ipaddress.ip_interface((raw, prefix)))
        return tuple(out)

    def _routes(self, family: int, names: dict[int, str], index: int) -> list[SavedRoute]:
        """The main table's routes a reconcile may change: the default route, and those
        through the interface that the kernel did not add by itself for an address."""
        out = []
        request = RTMSG.pack(FAMILY[family], 0, 0, 0, 0, 0, 0, 0, 0)
        for _, data, start, end in self.channel.dump(RTM_GETROUTE, request):
            route_family, dst_len, _, _, table, protocol, scope, kind, _ = RTMSG.unpack_from(data, start)
            if route_family != FAMILY[family]:  # a kernel without IPv6 answers with every family
                continue
            found = netlink.attributes(data, start + RTMSG.size, end)
            if RTA_TABLE in found:
                table = U32.unpack(found[RTA_TABLE])[0]
            if table != RT_TABLE_MAIN or kind != RTN_UNICAST or protocol == RTPROT_KERNEL:
                continue
            oif = U32.unpack(found[RTA_OIF])[0] if RTA_OIF in found else None
            if dst_len and oif != index:
                continue
            destination = "default"
            if dst_len:
                destination = f"{ipaddress.ip_address(found[RTA_DST])}/{dst_len}"
            via = str(ipaddress.ip_address(found[RTA_GATEWAY])) if RTA_GATEWAY in found else None
            dev = names.get(oif) if oif is not None else None
            metric = U32.unpack(found[RTA_PRIORITY])[0] if RTA_PRIORITY in found else 0
            out.append(SavedRoute(family, destination, via, dev, SCOPE_NAMES.get(scope), metric))
        return out

    def has_carrier(self, name: str) -> bool | None:
        # sysfs: a macvlan's carrier is its parent's.
        value = _read(f"/sys/class/net/{name}/carrier")
        return None if value is None else value == "1"

    # --- changing ----------------------------------------------------------------------------

    def configure(self, plan: NetworkPlan, remove: tuple[IPInterface, ...]) -> None:
        for step in setup_steps(plan, remove):
            try:
                self._take(step)
            except OSError as error:
                raise ApplyError(step.command(), _words(error), Kind.of_errno(error.errno or 0)) from None

    def restore(self, snapshot: NetSnapshot, plan: NetworkPlan) -> None:
        for key, value in snapshot.sysctls:
            if value is not None:
                self.set_sysctl(key, value)
        # Every step is tried, past one that fails, so that as much as can be is put back.
        # Deleting what is already gone (the step that failed never added it) is no failure.
        failures = []
        for step in restore_steps(snapshot, plan):
            try:
                self._take(step)
            except OSError as error:
                if not step.deletes:
                    failures.append(f"{step.command()}: {_words(error)}")
        if failures:
            raise ApplyError("restore the previous network setup", "; ".join(failures))

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

    def _take(self, step: Step) -> None:
        """Send the step's message; raises OSError (NetlinkError: the kernel's refusal)."""
        index = socket.if_nametoindex(step.dev) if step.dev else 0
        if step.verb.startswith("link"):
            flags = IFF_UP if step.verb == "link up" else 0
            self.channel.change(RTM_NEWLINK, 0, IFINFOMSG.pack(0, 0, index, flags, IFF_UP))
        elif step.address is not None:
            self.channel.change(*address_message(step, index))
        else:
            self.channel.change(*route_message(step, index))


def address_message(step: Step, index: int) -> tuple[int, int, bytes]:
    """(type, flags, body) of an `address replace` or `address del` step."""
    address = step.address
    assert address is not None
    flags = IFA_F_NODAD if step.nodad else 0
    body = IFADDRMSG.pack(FAMILY[address.version], address.network.prefixlen, flags, 0, index)
    packed = address.ip.packed
    body += netlink.attr(IFA_LOCAL, packed) + netlink.attr(IFA_ADDRESS, packed)
    if step.verb == "address del":
        return RTM_DELADDR, 0, body
    if flags:
        body += netlink.attr(IFA_FLAGS, U32.pack(flags))
    return RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, body


def route_message(step: Step, index: int) -> tuple[int, int, bytes]:
    """(type, flags, body) of a `route replace` or `route del` step, in the main table, with
    the scope `ip` would choose: link for an IPv4 route without a gateway, else universe."""
    family = FAMILY[step.family]
    if step.destination in ("default", "0.0.0.0/0", "::/0"):
        dst_len, dst = 0, b""
    else:
        network = ipaddress.ip_interface(step.destination)
        dst_len, dst = network.network.prefixlen, network.ip.packed
    attrs = netlink.attr(RTA_DST, dst) if dst_len else b""
    if step.via:
        attrs += netlink.attr(RTA_GATEWAY, ipaddress.ip_address(step.via).packed)
    if index:
        attrs += netlink.attr(RTA_OIF, U32.pack(index))
    if step.metric:
        attrs += netlink.attr(RTA_PRIORITY, U32.pack(step.metric))
    if step.verb == "route del":
        scope = RT_SCOPE_NOWHERE if step.family == 4 else RT_SCOPE_UNIVERSE  # any scope
        return RTM_DELROUTE, 0, RTMSG.pack(family, dst_len, 0, 0, RT_TABLE_MAIN, 0, scope, 0, 0) + attrs
    if step.scope is not None:
        scope = SCOPES.get(step.scope, RT_SCOPE_UNIVERSE)
    elif step.family == 4 and not step.via:
        scope = RT_SCOPE_LINK
    else:
        scope = RT_SCOPE_UNIVERSE
    body = RTMSG.pack(family, dst_len, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope, RTN_UNICAST, 0)
    return RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, body + attrs


def _words(error: OSError) -> str:
    """The kernel's refusal as `ip` would put it: strerror, then its own words if any."""
    if isinstance(error, NetlinkError):
        return netlink.describe(error.errno or 0, error.detail)
    return error.strerror or str(error)


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None
