"""`NetBackend` on the real kernel, over rtnetlink: no `ip` process.

A read is five dumps on one NETLINK_ROUTE socket (links, addresses, routes and rules of both
families); each step is one acknowledged message, sent in the order `converge` gives, stopping at
the first the kernel refuses, as `ip -batch` would.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Sequence

from .. import netlink
from ..errors import ApplyError, Kind
from ..netlink import NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NetlinkError
from ..schema import ROUTE_TABLE, RULE_PRIORITIES
from .state import (
    MAIN_TABLE,
    AddAddress,
    Address,
    AddRule,
    DelAddress,
    DelRoute,
    DelRule,
    LinkDown,
    LinkState,
    LinkUp,
    NetState,
    ReplaceRoute,
    Route,
    Rule,
    Scope,
    SetSysctl,
    Step,
    canonical,
    take_steps,
)

RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU = 1, 3, 4
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_NODAD = 0x02
IFA_F_NOPREFIXROUTE = 0x200
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 6, 7, 15
FRA_DST, FRA_SRC, FRA_IIFNAME, FRA_PRIORITY, FRA_FWMARK, FRA_TABLE, FRA_FWMASK = 1, 2, 3, 6, 10, 15, 16
FR_ACT_TO_TBL = 1
RTPROT_BOOT = 3
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE, RT_SCOPE_NOWHERE = 0, 255
SCOPES = {"global": 0, "site": 200, "link": 253, "host": 254}
SCOPE_NAMES = {value: name for name, value in SCOPES.items()}

FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
VERSION = {socket.AF_INET: 4, socket.AF_INET6: 6}
LINK_LOCAL6 = ipaddress.IPv6Network("fe80::/10")

IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
RULEMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, res, res, action, flags
U32 = struct.Struct("=I")


class RtNetlink:
    def __init__(self, proc_sys: str = "/proc/sys") -> None:
        self.proc_sys = proc_sys
        self.channel = netlink.Channel(netlink.NETLINK_ROUTE)

    # --- reading -----------------------------------------------------------------------------

    def read(self, scope: Scope) -> NetState:
        try:
            index = socket.if_nametoindex(scope.interface)
        except OSError:
            return NetState(None)
        try:
            names, links = self._links()
            pod = next((i for i, state in links.items() if state.name == scope.pod_interface), None)
            addresses = self._addresses((index, pod))  # one dump for both links
            routes = tuple(r for family in (4, 6) for r in self._routes(family, names, index))
            rules = tuple(r for family in (4, 6) for r in self._rules(family))
        except OSError as error:
            raise ApplyError(f"read interface {scope.interface}", _words(error), _kind(error)) from None
        link = links.get(index)
        if link is None:  # gone between the two reads
            return NetState(None)
        values = tuple((key, _read(f"{self.proc_sys}/{key}")) for key in scope.sysctls)
        pod_addresses = tuple(a.address for a in addresses.get(pod, ())) if pod is not None else ()
        pod_mtu = links[pod].mtu if pod is not None else None
        ours = tuple(addresses.get(index, ()))
        return canonical(NetState(link, ours, routes, rules, values, pod_mtu, pod_addresses))

    def _links(self) -> tuple[dict[int, str], dict[int, LinkState]]:
        names: dict[int, str] = {}
        links: dict[int, LinkState] = {}
        for _, data, start, end in self.channel.dump(RTM_GETLINK, IFINFOMSG.pack(0, 0, 0, 0, 0)):
            _, _, number, flags, _ = IFINFOMSG.unpack_from(data, start)
            found = netlink.attributes(data, start + IFINFOMSG.size, end)
            name = found.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace")
            names[number] = name
            mac = ":".join(f"{b:02x}" for b in found.get(IFLA_ADDRESS, b""))
            mtu = U32.unpack(found[IFLA_MTU])[0] if IFLA_MTU in found else 0
            links[number] = LinkState(name, bool(flags & IFF_UP), bool(flags & IFF_LOWER_UP), mac, mtu)
        return names, links

    def _addresses(self, indexes: tuple[int | None, ...]) -> dict[int, list[Address]]:
        """The addresses of global scope (link-local ones are the kernel's own) of the links
        `indexes` names, by link."""
        out: dict[int, list[Address]] = {}
        for _, data, start, end in self.channel.dump(RTM_GETADDR, IFADDRMSG.pack(0, 0, 0, 0, 0)):
            family, prefix, flags, scope, number = IFADDRMSG.unpack_from(data, start)
            if number not in indexes or scope != RT_SCOPE_UNIVERSE or family not in VERSION:
                continue
            found = netlink.attributes(data, start + IFADDRMSG.size, end)
            raw = found.get(IFA_LOCAL) or found.get(IFA_ADDRESS)
            if IFA_FLAGS in found:  # the header holds only the lower 8 bits
                flags = U32.unpack(found[IFA_FLAGS])[0]
            if raw:
                ip = ipaddress.ip_interface((raw, prefix))
                out.setdefault(number, []).append(Address(ip, bool(flags & IFA_F_NOPREFIXROUTE)))
        return out

    def _routes(self, family: int, names: dict[int, str], index: int) -> list[Route]:
        """The routes the router owns: all of its table's, and the main table's through the
        egress link (but the kernel's own IPv6 link-local one)."""
        out = []
        request = RTMSG.pack(FAMILY[family], 0, 0, 0, 0, 0, 0, 0, 0)
        for _, data, start, end in self.channel.dump(RTM_GETROUTE, request):
            route_family, dst_len, _, _, table, _, scope, kind, _ = RTMSG.unpack_from(data, start)
            if route_family != FAMILY[family] or kind != RTN_UNICAST:  # a kernel without IPv6 answers with every family
                continue
            found = netlink.attributes(data, start + RTMSG.size, end)
            if RTA_TABLE in found:
                table = U32.unpack(found[RTA_TABLE])[0]
            oif = U32.unpack(found[RTA_OIF])[0] if RTA_OIF in found else None
            destination = "default"
            if dst_len:
                destination = f"{ipaddress.ip_address(found[RTA_DST])}/{dst_len}"
            if table != ROUTE_TABLE:
                if table != MAIN_TABLE or oif != index:
                    continue
                if family == 6 and dst_len and _link_local6(destination):
                    continue
            via = str(ipaddress.ip_address(found[RTA_GATEWAY])) if RTA_GATEWAY in found else None
            dev = names.get(oif) if oif is not None else None
            metric = U32.unpack(found[RTA_PRIORITY])[0] if RTA_PRIORITY in found else 0
            source = str(ipaddress.ip_address(found[RTA_PREFSRC])) if RTA_PREFSRC in found else None
            out.append(Route(family, table, destination, via, dev, SCOPE_NAMES.get(scope, str(scope)), metric, source))
        return out

    def _rules(self, family: int) -> list[Rule]:
        """The rules at the router's priorities, or pointing at its table."""
        out = []
        for _, data, start, end in self.channel.dump(RTM_GETRULE, RULEMSG.pack(FAMILY[family], 0, 0, 0, 0, 0, 0, 0, 0)):
            rule_family, dst_len, src_len, _, table, _, _, _, _ = RULEMSG.unpack_from(data, start)
            if rule_family != FAMILY[family]:
                continue
            found = netlink.attributes(data, start + RULEMSG.size, end)
            if FRA_TABLE in found:
                table = U32.unpack(found[FRA_TABLE])[0]
            priority = U32.unpack(found[FRA_PRIORITY])[0] if FRA_PRIORITY in found else 0
            if table != ROUTE_TABLE and priority not in RULE_PRIORITIES:
                continue
            fwmark = U32.unpack(found[FRA_FWMARK])[0] if FRA_FWMARK in found else None
            iif = found[FRA_IIFNAME].rstrip(b"\0").decode(errors="replace") if FRA_IIFNAME in found else None
            destination = source = None
            if FRA_DST in found:
                destination = f"{ipaddress.ip_address(found[FRA_DST])}/{dst_len}"
            if FRA_SRC in found:
                source = f"{ipaddress.ip_address(found[FRA_SRC])}/{src_len}"
            out.append(Rule(family, priority, table, fwmark, iif, destination, source))
        return out

    def has_carrier(self, name: str) -> bool | None:
        # sysfs: a macvlan's carrier is its parent's.
        value = _read(f"/sys/class/net/{name}/carrier")
        return None if value is None else value == "1"

    # --- changing ----------------------------------------------------------------------------

    def apply(self, steps: Sequence[Step], keep_going: bool = False) -> None:
        take_steps(steps, self._take_one, keep_going)

    def _take_one(self, step: Step) -> None:
        try:
            self._take(step)
        except OSError as error:
            raise ApplyError(str(step), _words(error), _kind(error)) from None

    def _take(self, step: Step) -> None:
        """Send the step's message; raises OSError (NetlinkError: the kernel's refusal)."""
        if isinstance(step, SetSysctl):
            self._set_sysctl(step)
        elif isinstance(step, (LinkUp, LinkDown)):
            index = socket.if_nametoindex(step.dev)
            flags = IFF_UP if isinstance(step, LinkUp) else 0
            self.channel.change(RTM_NEWLINK, 0, IFINFOMSG.pack(0, 0, index, flags, IFF_UP))
        elif isinstance(step, (AddAddress, DelAddress)):
            self.channel.change(*address_message(step, socket.if_nametoindex(step.dev)))
        elif isinstance(step, (ReplaceRoute, DelRoute)):
            dev = step.route.dev
            self.channel.change(*route_message(step, socket.if_nametoindex(dev) if dev else 0))
        else:
            self.channel.change(*rule_message(step))

    def _set_sysctl(self, step: SetSysctl) -> None:
        key, value = step.sysctl
        path = f"{self.proc_sys}/{key}"
        try:
            with open(path, "w") as handle:
                handle.write(value)
        except OSError as error:
            # /proc/sys is read-only in an unprivileged container. Fine if what the value does
            # is already so (a sysctl set in the Pod spec); an error naming the fix otherwise.
            if self._already(key, value):
                return
            raise ApplyError(
                str(step),
                f"{error.strerror or error}; allow it as a Pod sysctl (securityContext.sysctls), "
                "set it in the CNI plugin, or run the container privileged",
                _kind(error),
            ) from None

    def _already(self, key: str, value: str) -> bool:
        # (The plan asks for a loose rp_filter only where the check is strict: whether the
        # value already does what is wanted is its decision, not this adapter's.)
        return _read(f"{self.proc_sys}/{key}") == value


def address_message(step: AddAddress | DelAddress, index: int) -> tuple[int, int, bytes]:
    """(type, flags, body) of an address step."""
    address = step.address.address
    flags = IFA_F_NOPREFIXROUTE if step.address.noprefixroute else 0
    if address.version == 6:
        # nodad: an IPv6 source must be usable at once, not after a second of duplicate
        # address detection (the announcement that follows tells the LAN instead).
        flags |= IFA_F_NODAD
    body = IFADDRMSG.pack(FAMILY[address.version], address.network.prefixlen, flags & 0xFF, 0, index)
    packed = address.ip.packed
    body += netlink.attr(IFA_LOCAL, packed) + netlink.attr(IFA_ADDRESS, packed)
    if isinstance(step, DelAddress):
        return RTM_DELADDR, 0, body
    body += netlink.attr(IFA_FLAGS, U32.pack(flags))
    return RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, body


def route_message(step: ReplaceRoute | DelRoute, index: int) -> tuple[int, int, bytes]:
    """(type, flags, body) of a route step; the table always goes as RTA_TABLE (it may not fit
    the header's byte)."""
    route = step.route
    family = FAMILY[route.family]
    if route.destination == "default":
        dst_len, dst = 0, b""
    else:
        network = ipaddress.ip_interface(route.destination)
        dst_len, dst = network.network.prefixlen, network.ip.packed
    attrs = netlink.attr(RTA_DST, dst) if dst_len else b""
    attrs += netlink.attr(RTA_TABLE, U32.pack(route.table)) + netlink.attr(RTA_PRIORITY, U32.pack(route.metric))
    header_table = route.table if route.table < 256 else 0
    if isinstance(step, DelRoute):
        scope = RT_SCOPE_NOWHERE if route.family == 4 else RT_SCOPE_UNIVERSE  # any scope
        return RTM_DELROUTE, 0, RTMSG.pack(family, dst_len, 0, 0, header_table, 0, scope, 0, 0) + attrs
    if route.via:
        attrs += netlink.attr(RTA_GATEWAY, ipaddress.ip_address(route.via).packed)
    if index:
        attrs += netlink.attr(RTA_OIF, U32.pack(index))
    if route.source:
        attrs += netlink.attr(RTA_PREFSRC, ipaddress.ip_address(route.source).packed)
    scope = SCOPES.get(route.scope, RT_SCOPE_UNIVERSE)
    body = RTMSG.pack(family, dst_len, 0, 0, header_table, RTPROT_BOOT, scope, RTN_UNICAST, 0)
    return RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, body + attrs


def rule_message(step: AddRule | DelRule) -> tuple[int, int, bytes]:
    rule = step.rule
    dst_len = src_len = 0
    attrs = netlink.attr(FRA_PRIORITY, U32.pack(rule.priority)) + netlink.attr(FRA_TABLE, U32.pack(rule.table))
    if rule.fwmark is not None:
        attrs += netlink.attr(FRA_FWMARK, U32.pack(rule.fwmark)) + netlink.attr(FRA_FWMASK, U32.pack(0xFFFFFFFF))
    if rule.iif:
        attrs += netlink.name_attr(FRA_IIFNAME, rule.iif)
    if rule.destination:
        network = ipaddress.ip_interface(rule.destination)
        dst_len = network.network.prefixlen
        attrs += netlink.attr(FRA_DST, network.ip.packed)
    if rule.source:
        network = ipaddress.ip_interface(rule.source)
        src_len = network.network.prefixlen
        attrs += netlink.attr(FRA_SRC, network.ip.packed)
    header_table = rule.table if rule.table < 256 else 0
    body = RULEMSG.pack(FAMILY[rule.family], dst_len, src_len, 0, header_table, 0, 0, FR_ACT_TO_TBL, 0) + attrs
    if isinstance(step, DelRule):
        return RTM_DELRULE, 0, body
    return RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, body


def _link_local6(destination: str) -> bool:
    network = ipaddress.IPv6Network(destination, strict=False)
    return network.subnet_of(LINK_LOCAL6)


def _kind(error: OSError) -> Kind:
    return Kind.of_errno(error.errno or 0)


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
