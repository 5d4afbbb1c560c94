"""`RtNetlink` (`network.rtnl`) on the real kernel, checked against what `ip` reads back, and
`FakeNet` against the kernel: the same steps, the same state.

Every test builds a pod of its own: a router namespace as a new pod has it (the egress link
`eg0` down and without address, a cluster-side link `ve0` holding the pod's default routes)
and, next to it, the LAN's gateway (192.0.2.1, fe80::1, 2001:db8:1::1), which also holds
the far ends of both links and one address "outside" (203.0.113.1, 2001:db8:2::1) to connect
to. Where the kernel's state after the steps is compared with what `ip -batch` makes of the
lines the steps stand for, those lines go to `ip` in a twin pod.

The backend runs in a thread that has joined the router namespace (`in_netns`), so its socket
and its interface lookups are the namespace's; `has_carrier` reads /sys, which only
`ip netns exec` gives a process as the namespace sees it, so that one runs in a child process.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import egress_router
from egress_router.config import load_environment
from egress_router.errors import ApplyError
from egress_router.lab.netns import delete_namespaces, in_netns, ip, read_sysctl
from egress_router.network.fake import FakeLink, FakeNet
from egress_router.network.rtnl import RtNetlink
from egress_router.network.state import (
    MAIN_TABLE,
    Address,
    NetState,
    ReplaceRoute,
    Route,
    Rule,
    SetSysctl,
    Step,
    Sysctl,
    converge,
)
from egress_router.plan import NetworkPlan, build_network
from egress_router.schema import FWMARK, ROUTE_TABLE

pytestmark = pytest.mark.lab

T = TypeVar("T")
EGRESS = "eg0"  # the egress link (a veth; its far end eg1 is the gateway's)
OTHER = "ve0"  # the pod's cluster-side link, which carries its default routes at first
FORWARDING = ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding")
ENV = {
    "EGRESS_SOURCE": "192.0.2.99/24,2001:db8:1::99/64",
    "EGRESS_GATEWAY": "192.0.2.1,fe80::1",
    "EGRESS_DESTINATION": "80 tcp 203.0.113.25",
    "EGRESS_INTERFACE": EGRESS,
    "EGRESS_POD_INTERFACE": OTHER,
}
SOURCE_ROOT = str(Path(egress_router.__file__).resolve().parents[1])
SO_MARK = 36


def addr(text: str) -> Any:
    return ipaddress.ip_interface(text)


def dual_plan(interface: str = EGRESS) -> NetworkPlan:
    return build_network(load_environment({**ENV, "EGRESS_INTERFACE": interface}))


class Pod:
    """A router namespace and its LAN gateway's, as the module docstring draws them."""

    def __init__(self, made: list[str], router_lines: tuple[str, ...] = ()) -> None:
        tag = f"erl-{os.getpid()}-{secrets.token_hex(2)}"
        self.ns, self.gw = f"{tag}-rt", f"{tag}-gw"
        for name in (self.gw, self.ns):
            ip(["netns", "add", name])
            made.append(name)
        self.setup(
            [
                "link set lo up",
                f"link add {EGRESS} type veth peer name eg1 netns {self.gw}",
                f"link add {OTHER} type veth peer name ve1 netns {self.gw}",
                f"link set {OTHER} up",
                f"address add 198.51.100.2/24 dev {OTHER}",
            ]
        )
        self.setup(
            [
                "link set lo up",
                "address add 203.0.113.1/32 dev lo",
                "address add 2001:db8:2::1/128 dev lo",
                "link set eg1 up",
                "address add 192.0.2.1/24 dev eg1",
                "address add 2001:db8:1::1/64 dev eg1 nodad",
                "address add fe80::1/64 dev eg1 nodad",
                "link set ve1 up",
                "address add 198.51.100.1/24 dev ve1",
                "address add fe80::a/64 dev ve1 nodad",
            ],
            self.gw,
        )
        # The pod's default routes go through its cluster-side link, as a CNI leaves them.
        self.setup(
            [
                f"route add default via 198.51.100.1 dev {OTHER}",
                f"route add ::/0 via fe80::a dev {OTHER}",
            ]
            + list(router_lines)
        )
        self.net = self.inside(RtNetlink)  # its socket opens on first use, in the namespace

    # -- acting in the router namespace --------------------------------------------------------

    def inside(self, function: Callable[[], T]) -> T:
        return in_netns(self.ns, function)

    def __call__(self, use: Callable[[RtNetlink], T]) -> T:
        """Call `use` with the pod's backend, in the router namespace."""
        return self.inside(lambda: use(self.net))

    def ip(
        self, *args: str, ns: str | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "-n", ns or self.ns, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def batch(
        self, lines: list[str], ns: str | None = None, force: bool = False
    ) -> subprocess.CompletedProcess[str]:
        force_ = ["-force"] if force else []
        return self.ip(*force_, "-batch", "-", ns=ns, stdin="".join(f"{x}\n" for x in lines))

    def setup(self, lines: list[str], ns: str | None = None) -> None:
        done = self.batch(lines, ns)
        assert done.returncode == 0, f"setting up the pod failed: {done.stderr}"

    def json(self, *args: str) -> Any:
        done = self.ip("-j", *args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout or "[]")

    def link(self, name: str = EGRESS) -> Any:
        (found,) = self.json("address", "show", "dev", name)
        return found

    def routes(self, family: int) -> list[dict[str, Any]]:
        return self.json(f"-{family}", "route", "show")  # type: ignore[no-any-return]

    def sysctl(self, key: str) -> str:
        return read_sysctl(self.ns, key)

    def view(self, macs: bool = True) -> dict[str, Any]:
        """What `ip` shows of the namespace, less what the kernel changes by itself meanwhile
        (operstate, duplicate address detection running out) or names by ifindex. Without
        `macs`, also less what differs between two pods built alike: the MACs and the
        link-local addresses made from them."""
        links = {}
        for link in self.json("address", "show"):
            addresses = []
            for a in link.get("addr_info", []):
                if a.get("scope") == "link" and a["family"] == "inet6" and not macs:
                    continue
                flags = tuple(
                    k for k in ("nodad", "secondary", "dadfailed", "deprecated") if a.get(k)
                )
                where = (a.get("scope", ""), a.get("broadcast", ""), a.get("label", ""))
                addresses.append((a["family"], f"{a['local']}/{a['prefixlen']}", *where, flags))
            links[link["ifname"]] = {
                "flags": sorted(set(link["flags"]) & {"UP", "LOWER_UP"}),
                "mtu": link["mtu"],
                "mac": link.get("address") if macs else None,
                "addresses": sorted(addresses),
            }
        return {
            "links": links,
            "routes4": sorted(self.routes(4), key=_json),
            "routes6": sorted(self.routes(6), key=_json),
        }

    def rules(self, family: int) -> list[dict[str, Any]]:
        return self.json(f"-{family}", "rule", "show")  # type: ignore[no-any-return]

    def reach(self, address: str, mark: int = 0) -> str:
        """Connect from the router namespace to `address` (in the gateway's) over TCP, the
        socket's packets marked `mark` as the router's table marks redirected ones; return the
        source address the far end saw."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        server = in_netns(self.gw, lambda: socket.create_server((address, 0), family=family))

        def connect(port: int) -> socket.socket:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(5)
            if mark:
                sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
            sock.connect((address, port))
            return sock

        with server:
            server.settimeout(5)
            port = server.getsockname()[1]
            client = self.inside(lambda: connect(port))
            with client:
                conn, peer = server.accept()
                conn.close()
        return str(peer[0])

    # -- the backend under test ----------------------------------------------------------------

    def read(self, plan: NetworkPlan) -> NetState:
        return self(lambda net: net.read(plan.scope))

    def converge(self, plan: NetworkPlan) -> list[Step]:
        """Take the pod to `plan`, as a reconcile does: read, converge, apply; the steps."""
        state = self.read(plan)
        assert state.link is not None
        steps = converge(state, plan.wanted(state.link))
        self(lambda net: net.apply(steps))
        return steps


def _json(route: dict[str, Any]) -> str:
    return json.dumps(route, sort_keys=True)


@pytest.fixture
def pods() -> Iterator[Callable[..., Pod]]:
    made: list[str] = []

    def make(*router_lines: str) -> Pod:
        return Pod(made, router_lines)

    try:
        yield make
    finally:
        delete_namespaces(made)


@pytest.fixture
def pod(pods: Callable[..., Pod]) -> Pod:
    return pods()


def ip_lines(steps: list[Step]) -> list[str]:
    """The `ip` command lines the steps stand for (sysctls are not ip's)."""
    return [str(step) for step in steps if not isinstance(step, SetSysctl)]


def kernel_words(stderr: str) -> str:
    """The kernel's reason in ip's error output: 'Error: Nexthop has invalid gateway.'"""
    first = stderr.strip().splitlines()[0]
    return first.removeprefix("Error: ").removeprefix("RTNETLINK answers: ").rstrip(".")


# -- setting up ------------------------------------------------------------------------------------


def test_a_dual_stack_plan_sends_only_marked_traffic_out_and_leaves_the_pods_routes(
    pods: Callable[..., Pod],
) -> None:
    plan = dual_plan()
    ours, theirs = pods(), pods()
    main4, main6 = ours.routes(4), ours.routes(6)
    steps = ours.converge(plan)

    link = ours.link()
    assert {"UP", "LOWER_UP"} <= set(link["flags"])
    found = {f"{a['local']}/{a['prefixlen']}": a for a in link["addr_info"] if a["scope"] == "global"}
    assert sorted(found) == ["192.0.2.99/24", "2001:db8:1::99/64"]
    assert all(a.get("noprefixroute") for a in found.values()), found
    six = found["2001:db8:1::99/64"]
    assert six.get("nodad") and not six.get("tentative"), f"the IPv6 source is not usable at once: {six}"
    # The pod's own routes, its default routes through the cluster-side link among them, are
    # exactly as its network left them: no subnet route, no default route through eg0.
    eg0_link_local = {"dst": "fe80::/64", "dev": EGRESS, "protocol": "kernel", "metric": 256, "flags": [], "pref": "medium"}
    assert (ours.routes(4), [r for r in ours.routes(6) if r != eg0_link_local]) == (main4, main6)
    table4 = ours.json("-4", "route", "show", "table", str(ROUTE_TABLE))
    assert sorted((r["dst"], r.get("gateway"), r["dev"], r.get("prefsrc")) for r in table4) == [
        ("192.0.2.0/24", None, EGRESS, "192.0.2.99"),
        ("default", "192.0.2.1", EGRESS, "192.0.2.99"),
    ]
    for family in (4, 6):
        ours_rules = [r for r in ours.rules(family) if r.get("priority") == 2430]
        assert [(r.get("fwmark"), r.get("table")) for r in ours_rules] == [(hex(FWMARK), str(ROUTE_TABLE))]

    # Unmarked, the pod's own connections follow the pod network; marked (as the table marks
    # what it redirects), they leave through the gateway from the source the plan gave: over
    # IPv6 via a link-local gateway, at once (no duplicate detection holds the address).
    (plain,) = ours.json("route", "get", "203.0.113.1")
    assert plain["dev"] == OTHER
    assert ours.reach("203.0.113.1", FWMARK) == "192.0.2.99"
    assert ours.reach("2001:db8:2::1", FWMARK) == "2001:db8:1::99"

    # `ip`, given the lines the steps stand for, leaves the twin pod in the same state.
    for line in ip_lines(steps):
        done = theirs.ip(*line.split())
        assert done.returncode == 0, f"ip {line}: {done.stderr}"
    assert ours.view(macs=False) == theirs.view(macs=False)
    assert ours.json("-4", "route", "show", "table", str(ROUTE_TABLE)) == theirs.json(
        "-4", "route", "show", "table", str(ROUTE_TABLE)
    )


def test_converging_again_takes_no_step(pod: Pod) -> None:
    plan = dual_plan()
    pod.converge(plan)
    once = pod.view()
    assert pod.converge(plan) == []
    fresh = pod.inside(RtNetlink)  # a restarted router, a new socket
    state = pod.inside(lambda: fresh.read(plan.scope))
    assert state.link is not None and converge(state, plan.wanted(state.link)) == []
    assert pod.view() == once


PREFIXLESS = {
    **ENV,
    "EGRESS_SOURCE": "192.0.2.99,2001:db8:1::99",
    "EGRESS_GATEWAY": "192.0.2.1,2001:db8:1::1",
}


def test_sources_without_prefix_reach_their_gateway_through_host_routes(pod: Pod) -> None:
    plan = build_network(load_environment(PREFIXLESS))
    pod.converge(plan)
    found = [a for a in pod.link()["addr_info"] if a["scope"] == "global"]
    assert [f"{a['local']}/{a['prefixlen']}" for a in found] == ["192.0.2.99/32", "2001:db8:1::99/128"]
    table6 = pod.json("-6", "route", "show", "table", str(ROUTE_TABLE))
    assert sorted(r["dst"] for r in table6) == ["2001:db8:1::1", "default"]
    assert pod.reach("203.0.113.1", FWMARK) == "192.0.2.99"
    assert pod.reach("2001:db8:2::1", FWMARK) == "2001:db8:1::99"


# -- reading -----------------------------------------------------------------------------------------


def test_a_new_pods_read_is_what_ip_shows(pod: Pod) -> None:
    plan = dual_plan()
    state = pod.read(plan)
    link = pod.link()
    assert state.link is not None
    assert (state.link.up, state.link.mac, state.link.mtu) == (False, link["address"], link["mtu"])
    # Nothing of the router's: the pod's default routes go through ve0, not eg0.
    assert (state.addresses, state.routes, state.rules) == ((), (), ())
    assert state.pod_mtu == pod.link(OTHER)["mtu"]
    assert state.pod_addresses == (addr("198.51.100.2/24"),)
    assert dict(state.sysctls) == {key: pod.sysctl(key) for key in plan.scope.sysctls}


def test_a_configured_pods_read_is_the_plan_exactly(pod: Pod) -> None:
    plan = dual_plan()
    pod.converge(plan)
    state = pod.read(plan)
    assert state.link is not None and state.link.up
    # One idea of "the same route" for the kernel and the plan: what is read compares equal.
    wanted = plan.wanted(state.link)
    owned = tuple(item for item in state.sysctls if item[0] in dict(wanted.sysctls))  # `all`'s is only read
    assert state._replace(pod_mtu=None, pod_addresses=(), sysctls=owned) == wanted


def test_a_missing_interface_reads_as_none(pod: Pod) -> None:
    assert pod.read(dual_plan("nope0")).link is None


def test_what_an_older_router_left_converges_to_the_plan_and_back(pod: Pod) -> None:
    # An address without noprefixroute (its subnet route in the main table) and a default
    # route through eg0 beside the pod's own.
    pod.setup([
        f"link set {EGRESS} up",
        f"address add 192.0.2.99/24 dev {EGRESS}",
        f"route add default via 192.0.2.1 dev {EGRESS} metric 10",
    ])
    plan = dual_plan()
    old = pod.read(plan)
    old_view = pod.view()
    pod.converge(plan)
    assert not [r for r in pod.routes(4) if r.get("dev") == EGRESS]
    assert [r["dev"] for r in pod.routes(4) if r["dst"] == "default"] == [OTHER]
    now = pod.read(plan)
    assert now.link is not None and old.link is not None
    pod(lambda net: net.apply(converge(now, old), keep_going=True))
    assert pod.view() == old_view


# -- refusals and the way back -----------------------------------------------------------------


def test_a_step_refused_part_way_stops_there_and_converging_back_restores_the_pod(pod: Pod) -> None:
    plan = dual_plan()
    before = pod.read(plan)
    before_view = pod.view()
    subprocess.run(["ip", "netns", "exec", pod.ns, "sysctl", "-qw", f"net.ipv6.conf.{EGRESS}.disable_ipv6=1"], check=True)
    with pytest.raises(ApplyError) as refused:
        pod.converge(plan)
    assert str(refused.value).startswith(f"failed to address add 2001:db8:1::99/64 noprefixroute dev {EGRESS} nodad: ")
    half = pod.read(plan)
    assert half.link is not None and half.up and half.addresses  # the steps before it stayed
    assert before.link is not None
    pod(lambda net: net.apply(converge(half, before), keep_going=True))
    assert pod.read(plan) == before._replace(sysctls=pod.read(plan).sysctls)
    assert pod.view() == before_view


def test_a_refusal_names_the_step_and_the_kernels_words(pod: Pod) -> None:
    pod.setup([f"link set {EGRESS} up"])
    route = Route(4, ROUTE_TABLE, "default", "203.0.113.77", EGRESS, "global", 0)
    with pytest.raises(ApplyError) as refused:
        pod(lambda net: net.apply([ReplaceRoute(route)]))
    done = pod.ip("route", "replace", "default", "via", "203.0.113.77", "dev", EGRESS, "table", str(ROUTE_TABLE))
    assert done.returncode != 0
    assert str(refused.value) == (
        f"failed to route replace default via 203.0.113.77 dev {EGRESS} table 2430: "
        f"Network is unreachable ({kernel_words(done.stderr)})"
    )


def test_the_fake_takes_the_same_steps_to_the_same_state_and_back(pod: Pod) -> None:
    plan = dual_plan()
    real = pod.read(plan)
    assert real.link is not None
    fake = FakeNet(
        links={
            EGRESS: FakeLink(mac=real.link.mac, mtu=real.link.mtu, carrier=False),
            OTHER: FakeLink(up=True, addresses=[Address(a, False) for a in real.pod_addresses]),
        },
        sysctls={k: v for k, v in real.sysctls if v is not None},
    )
    assert fake.read(plan.scope) == real
    steps = converge(real, plan.wanted(real.link))
    pod(lambda net: net.apply(steps))
    fake.apply(steps)
    after = pod.read(plan)
    assert fake.read(plan.scope)._replace(link=after.link) == after
    # Back, on both, the same way.
    back = converge(after, real)
    pod(lambda net: net.apply(back, keep_going=True))
    fake.apply(back, keep_going=True)
    assert pod.read(plan) == real
    assert fake.read(plan.scope) == real


def test_a_rule_and_a_route_of_the_routers_table_are_read_whatever_their_origin(pod: Pod) -> None:
    # Someone else's rule pointing at the router's table, and a stray route in it: both are
    # the router's to remove.
    pod.setup([f"link set {EGRESS} up", f"rule add priority 100 iif {OTHER} lookup {ROUTE_TABLE}",
               f"route add 203.0.113.0/24 dev {EGRESS} table {ROUTE_TABLE}"])
    state = pod.read(dual_plan())
    assert Rule(4, 100, ROUTE_TABLE, iif=OTHER) in state.rules
    assert Route(4, ROUTE_TABLE, "203.0.113.0/24", None, EGRESS, "link", 0) in state.routes
    pod.converge(dual_plan())
    assert "priority 100" not in str(pod.read(dual_plan()).rules)
    assert "203.0.113.0/24" not in str(pod.read(dual_plan()).routes)
    assert MAIN_TABLE not in {r.table for r in pod.read(dual_plan()).routes}


# -- sysctls and carrier -------------------------------------------------------------------------


def test_sysctl_steps_write_the_namespaces_value_only(pod: Pod) -> None:
    key = "net/ipv4/ip_forward"
    host = Path(f"/proc/sys/{key}").read_text().strip()
    subprocess.run(["ip", "netns", "exec", pod.ns, "sysctl", "-qw", "net.ipv4.ip_forward=0"], check=True)
    pod(lambda net: net.apply([SetSysctl(Sysctl(key, "1")), SetSysctl(Sysctl(f"net/ipv4/conf/{EGRESS}/rp_filter", "2"))]))
    assert pod.sysctl(key) == "1" and pod.sysctl(f"net/ipv4/conf/{EGRESS}/rp_filter") == "2"
    assert Path(f"/proc/sys/{key}").read_text().strip() == host
    with pytest.raises(ApplyError, match=r"^failed to sysctl net\.ipv4\.no_such_sysctl=1: "):
        pod(lambda net: net.apply([SetSysctl(Sysctl("net/ipv4/no_such_sysctl", "1"))]))


CARRIER_PROBE = f"""
import json, subprocess
from egress_router.network.rtnl import RtNetlink
from egress_router.network.state import Scope
net = RtNetlink()
def look():
    link = net.read(Scope("{EGRESS}", "{OTHER}")).link
    return [net.has_carrier("{EGRESS}"), link.up, link.carrier]
seen = {{"down": look()}}
subprocess.run(["ip", "link", "set", "{EGRESS}", "up"], check=True)
seen["up"] = look()
subprocess.run(["ip", "-n", "{{gw}}", "link", "set", "eg1", "down"], check=True)
seen["far end down"] = look()
seen["missing"] = net.has_carrier("nope0")
print(json.dumps(seen))
"""


def test_has_carrier_follows_the_far_end_of_the_link(pod: Pod) -> None:
    # In a child process: /sys is the namespace's only under `ip netns exec`, as in a pod.
    done = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            pod.ns,
            sys.executable,
            "-c",
            CARRIER_PROBE.replace("{gw}", pod.gw),
        ],
        env={**os.environ, "PYTHONPATH": SOURCE_ROOT},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    # has_carrier, then the read's up and carrier (ip's UP and LOWER_UP)
    assert seen == {
        "down": [None, False, False],  # a link that is down cannot tell
        "up": [True, True, True],
        "far end down": [False, True, False],
        "missing": None,
    }
    assert set(pod.link()["flags"]) & {"UP", "LOWER_UP"} == {"UP"}
