"""`RtNetlink` (`netlink.rtnl`) on the real kernel, checked against what `ip` reads back.

Every test builds a pod of its own: a router namespace as a new pod has it (the egress link
`eg0` down and without address, a cluster-side link `ve0` holding the pod's default routes)
and, next to it, the LAN's gateway (192.0.2.1, fe80::1, 2001:db8:1::1), which also holds
the far ends of both links and one address "outside" (203.0.113.1, 2001:db8:2::1) to connect
to. `RtNetlink` replaced `ip -batch`: where the kernel's state after a change is compared with
what `ip -batch` makes of the same steps, the same steps go to `ip` in a twin pod.

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
from egress_router.lab.netns import delete_namespaces, in_netns, ip, read_sysctl, write_sysctls
from egress_router.netlink import LinkState, NetSnapshot, SavedRoute, restore_steps, setup_steps
from egress_router.netlink.rtnl import RtNetlink
from egress_router.plan import NetworkPlan, Route, build_network

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
}
SOURCE_ROOT = str(Path(egress_router.__file__).resolve().parents[1])


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

    def reach(self, address: str) -> str:
        """Connect from the router namespace to `address` (in the gateway's) over TCP; return
        the source address the far end saw."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        server = in_netns(self.gw, lambda: socket.create_server((address, 0), family=family))
        with server:
            server.settimeout(5)
            port = server.getsockname()[1]
            client = self.inside(lambda: socket.create_connection((address, port), timeout=5))
            with client:
                conn, peer = server.accept()
                conn.close()
        return str(peer[0])


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


def saved_routes_of(pod: Pod, family: int, interface: str = EGRESS) -> list[SavedRoute]:
    """The routes a snapshot must hold, read from `ip -j route show` as the `ip` backend read
    them: unicast routes of the main table, the default ones and those through `interface`,
    but for those the kernel added for an address; the destination with its prefix length."""
    found = []
    for r in pod.routes(family):
        if r.get("protocol") == "kernel" or r.get("type", "unicast") != "unicast":
            continue
        if r["dst"] != "default" and r.get("dev") != interface:
            continue
        destination = r["dst"]
        if destination != "default" and "/" not in destination:
            destination += "/32" if family == 4 else "/128"
        found.append(
            SavedRoute(
                family, destination, r.get("gateway"), r.get("dev"), r.get("scope"), int(r.get("metric", 0))
            )
        )
    return found


def link_state_of(pod: Pod, name: str = EGRESS) -> LinkState:
    link = pod.link(name)
    return LinkState(
        name,
        "UP" in link["flags"],
        "LOWER_UP" in link["flags"],
        link["address"],
        link["mtu"],
        tuple(
            addr(f"{a['local']}/{a['prefixlen']}")
            for a in link.get("addr_info", [])
            if a.get("scope") == "global"
        ),
    )


def defaults(routes: list[dict[str, Any]]) -> list[tuple[str | None, str | None, int | None]]:
    return [
        (r.get("gateway"), r.get("dev"), r.get("metric")) for r in routes if r["dst"] == "default"
    ]


def kernel_words(stderr: str) -> str:
    """The kernel's reason in ip's error output: 'Error: Nexthop has invalid gateway.'"""
    first = stderr.strip().splitlines()[0]
    return first.removeprefix("Error: ").removeprefix("RTNETLINK answers: ").rstrip(".")


# -- configure -----------------------------------------------------------------------------------


def test_a_dual_stack_plan_is_set_up_as_ip_batch_would_and_carries_traffic(
    pods: Callable[..., Pod],
) -> None:
    plan = dual_plan()
    ours, theirs = pods(), pods()
    ours(lambda net: net.configure(plan, ()))

    link = ours.link()
    assert {"UP", "LOWER_UP"} <= set(link["flags"])
    found = {
        f"{a['local']}/{a['prefixlen']}": a for a in link["addr_info"] if a["scope"] == "global"
    }
    assert sorted(found) == ["192.0.2.99/24", "2001:db8:1::99/64"]
    six = found["2001:db8:1::99/64"]
    assert six.get("nodad") and not six.get("tentative"), (
        f"the IPv6 source is not usable at once: {six}"
    )

    routes4, routes6 = ours.routes(4), ours.routes(6)
    (host4,) = [r for r in routes4 if r["dst"] == "192.0.2.1"]
    assert (host4["dev"], host4.get("scope"), host4.get("gateway")) == (EGRESS, "link", None)
    (host6,) = [r for r in routes6 if r["dst"] == "fe80::1"]
    assert (host6["dev"], host6.get("gateway")) == (EGRESS, None)
    # The pod's default routes through its cluster-side link were replaced, not joined.
    assert defaults(routes4) == [("192.0.2.1", EGRESS, None)]
    assert defaults(routes6) == [("fe80::1", EGRESS, 1024)]

    (way4,) = ours.json("route", "get", "203.0.113.1")
    assert (way4.get("gateway"), way4["dev"], way4["prefsrc"]) == (
        "192.0.2.1",
        EGRESS,
        "192.0.2.99",
    )
    (way6,) = ours.json("-6", "route", "get", "2001:db8:2::1")
    assert (way6.get("gateway"), way6["dev"], way6["prefsrc"]) == (
        "fe80::1",
        EGRESS,
        "2001:db8:1::99",
    )
    # A connection goes out through the gateway, from the source the plan gave: over IPv6 via
    # a link-local gateway, and answered at once (no duplicate detection holds the address).
    assert ours.reach("203.0.113.1") == "192.0.2.99"
    assert ours.reach("2001:db8:2::1") == "2001:db8:1::99"

    # `ip -batch`, given the lines the steps stand for, leaves the twin pod in the same state.
    lines = [step.command() for step in setup_steps(plan, ())]
    done = theirs.batch(lines)
    assert done.returncode == 0, done.stderr
    assert ours.view(macs=False) == theirs.view(macs=False)


def test_configuring_again_changes_nothing(pod: Pod) -> None:
    plan = dual_plan()
    pod(lambda net: net.configure(plan, ()))
    once = pod.view()
    pod(lambda net: net.configure(plan, ()))
    assert pod.view() == once
    pod.inside(lambda: RtNetlink().configure(plan, ()))  # a restarted router, a new socket
    assert pod.view() == once


PREFIXLESS = {
    **ENV,
    "EGRESS_SOURCE": "192.0.2.99,2001:db8:1::99",
    "EGRESS_GATEWAY": "192.0.2.1,2001:db8:1::1",
}


def test_sources_without_prefix_reach_their_gateway_through_the_host_routes(pod: Pod) -> None:
    plan = build_network(load_environment(PREFIXLESS))
    pod(lambda net: net.configure(plan, ()))
    found = [a for a in pod.link()["addr_info"] if a["scope"] == "global"]
    assert [f"{a['local']}/{a['prefixlen']}" for a in found] == [
        "192.0.2.99/32",
        "2001:db8:1::99/128",
    ]
    (host4,) = [r for r in pod.routes(4) if r["dst"] == "192.0.2.1"]
    assert (host4["dev"], host4.get("scope")) == (EGRESS, "link")
    (host6,) = [r for r in pod.routes(6) if r["dst"] == "2001:db8:1::1"]
    assert host6["dev"] == EGRESS
    assert defaults(pod.routes(4)) == [("192.0.2.1", EGRESS, None)]
    assert defaults(pod.routes(6)) == [("2001:db8:1::1", EGRESS, 1024)]
    assert pod.reach("203.0.113.1") == "192.0.2.99"
    assert pod.reach("2001:db8:2::1") == "2001:db8:1::99"


# -- snapshot ------------------------------------------------------------------------------------


def test_a_new_pods_snapshot_is_what_ip_shows(pod: Pod) -> None:
    snapshot = pod(lambda net: net.snapshot(EGRESS, (4, 6), FORWARDING))
    assert snapshot.link == link_state_of(pod)
    assert snapshot.link is not None and not snapshot.link.up and not snapshot.link.carrier
    assert snapshot.link.addresses == ()
    assert list(snapshot.routes) == saved_routes_of(pod, 4) + saved_routes_of(pod, 6)
    assert list(snapshot.routes) == [
        SavedRoute(4, "default", "198.51.100.1", OTHER),
        SavedRoute(6, "default", "fe80::a", OTHER, metric=1024),  # the kernel's IPv6 default
    ]
    assert snapshot.sysctls == tuple((key, pod.sysctl(key)) for key in FORWARDING)


def test_a_configured_pods_snapshot_is_what_ip_shows(pod: Pod) -> None:
    pod(lambda net: net.configure(dual_plan(), ()))
    more = [
        f"link set dev {EGRESS} mtu 1400",
        f"address add 192.0.2.100/24 dev {EGRESS}",  # a secondary
        f"address add 2001:db8:1::100/64 dev {EGRESS} nodad",
        f"address add 203.0.113.200/28 dev {EGRESS} scope link",  # not global: not the router's
        f"route add 203.0.113.0/24 via 192.0.2.1 dev {EGRESS}",
        f"route add 198.51.100.128/25 dev {EGRESS}",  # scope link, by ip's choice
        f"route add 203.0.113.9 dev {EGRESS} scope host",
        f"route add default via 198.51.100.1 dev {OTHER} metric 100",  # through another link
        f"route add 198.51.100.64/26 via 198.51.100.1 dev {OTHER}",  # neither: left out
        "route add blackhole 203.0.113.128/25",  # not unicast: left out
        "route add unreachable default metric 500",
        f"route add default via 192.0.2.1 dev {EGRESS} table 100",  # not the main table
        f"route add 2001:db8:5::/48 via fe80::1 dev {EGRESS}",
        f"route add ::/0 via fe80::a dev {OTHER} metric 2000",
        f"route add 2001:db8:6::/48 via fe80::a dev {OTHER}",
    ]
    pod.setup(more)
    keys = (*FORWARDING, f"net/ipv4/conf/{EGRESS}/rp_filter", "net/ipv4/no_such_sysctl")
    snapshot = pod(lambda net: net.snapshot(EGRESS, (4, 6), keys))

    assert snapshot.link == link_state_of(pod)
    assert snapshot.link is not None and snapshot.link.mtu == 1400
    assert set(snapshot.link.addresses) == {
        addr(a)
        for a in ("192.0.2.99/24", "192.0.2.100/24", "2001:db8:1::99/64", "2001:db8:1::100/64")
    }
    assert list(snapshot.routes) == saved_routes_of(pod, 4) + saved_routes_of(pod, 6)
    assert set(snapshot.routes) == {
        SavedRoute(4, "default", "192.0.2.1", EGRESS),
        SavedRoute(4, "default", "198.51.100.1", OTHER, metric=100),
        SavedRoute(4, "192.0.2.1/32", None, EGRESS, "link"),
        SavedRoute(4, "203.0.113.0/24", "192.0.2.1", EGRESS),
        SavedRoute(4, "198.51.100.128/25", None, EGRESS, "link"),
        SavedRoute(4, "203.0.113.9/32", None, EGRESS, "host"),
        SavedRoute(6, "default", "fe80::1", EGRESS, metric=1024),
        SavedRoute(6, "default", "fe80::a", OTHER, metric=2000),
        SavedRoute(6, "fe80::1/128", None, EGRESS, metric=1024),
        SavedRoute(6, "2001:db8:5::/48", "fe80::1", EGRESS, metric=1024),
    }
    assert snapshot.sysctls == (
        *((key, pod.sysctl(key)) for key in keys[:3]),
        ("net/ipv4/no_such_sysctl", None),
    )
    # Only the families asked for.
    four = pod(lambda net: net.snapshot(EGRESS, (4,), ()))
    assert list(four.routes) == saved_routes_of(pod, 4) and four.sysctls == ()
    six = pod(lambda net: net.snapshot(EGRESS, (6,), ()))
    assert list(six.routes) == saved_routes_of(pod, 6)


def test_a_missing_interface_has_an_empty_snapshot(pod: Pod) -> None:
    assert pod(lambda net: net.snapshot("nope0", (4, 6), FORWARDING)) == NetSnapshot(None, (), ())


# -- restore -------------------------------------------------------------------------------------


STALE_DOWN = (f"address add 192.0.2.50/24 dev {EGRESS}",)  # left on the link, which is down
CONFIGURED_UP = (  # a link someone set up before: an address, a route through it
    f"link set {EGRESS} up",
    f"address add 192.0.2.50/24 dev {EGRESS}",
    f"route add 203.0.113.0/24 via 192.0.2.1 dev {EGRESS}",
    f"route add 198.51.100.200 dev {EGRESS}",
    f"address add 2001:db8:1::50/64 dev {EGRESS}",
)


@pytest.mark.parametrize(
    "before", [(), STALE_DOWN, CONFIGURED_UP], ids=["new", "stale-down", "configured-up"]
)
def test_restore_puts_the_namespace_back_as_it_was(
    pods: Callable[..., Pod], before: tuple[str, ...]
) -> None:
    pod = pods(*before)
    plan = dual_plan()
    was = pod.view()
    sysctls_were = [pod.sysctl(key) for key in FORWARDING]
    snapshot = pod(lambda net: net.snapshot(EGRESS, (4, 6), FORWARDING))
    assert snapshot.link is not None
    stale = tuple(a for a in snapshot.link.addresses if a not in plan.addresses)

    def change(net: RtNetlink) -> None:  # as the reconcile does
        for key, value in plan.sysctls:
            net.set_sysctl(key, value)
        net.configure(plan, stale)

    pod(change)
    assert pod.view() != was and [pod.sysctl(key) for key in FORWARDING] == ["1", "1"]
    pod(lambda net: net.restore(snapshot, plan))
    assert pod.view() == was
    assert [pod.sysctl(key) for key in FORWARDING] == sysctls_were


def test_a_step_refused_part_way_stops_there_as_ip_batch_did_and_restore_undoes_it(
    pods: Callable[..., Pod],
) -> None:
    ours, theirs = pods(*STALE_DOWN), pods(*STALE_DOWN)
    was = ours.view()
    gateway = ipaddress.ip_address("203.0.113.1")  # not on the link: the kernel refuses the route
    plan = NetworkPlan(
        EGRESS,
        (addr("192.0.2.99/24"), addr("2001:db8:1::99/64")),
        (
            Route("192.0.2.1/32", None, 4),
            Route("default", gateway, 4),
            Route("fe80::1/128", None, 6),
            Route("default", ipaddress.ip_address("fe80::1"), 6),
        ),
        (),
    )
    stale = (addr("192.0.2.50/24"),)
    snapshot = ours(lambda net: net.snapshot(EGRESS, (4, 6), ()))
    with pytest.raises(ApplyError) as caught:
        ours(lambda net: net.configure(plan, stale))
    lines = [step.command() for step in setup_steps(plan, stale)]
    refused = f"route replace default via 203.0.113.1 dev {EGRESS}"
    assert caught.value.step == refused
    assert str(caught.value).startswith(f"failed to {refused}: ")

    done = theirs.batch(lines)
    assert done.returncode != 0 and f"Command failed -:{lines.index(refused) + 1}" in done.stderr
    assert kernel_words(done.stderr) in caught.value.detail  # the kernel's own words
    # What came before the refused step stayed, nothing after it was taken: as with ip -batch.
    assert ours.view(macs=False) == theirs.view(macs=False)
    assert "UP" in ours.link()["flags"]
    assert [
        r["dst"] for r in ours.routes(4) if r.get("dev") == EGRESS and r.get("protocol") != "kernel"
    ] == ["192.0.2.1"]
    assert defaults(ours.routes(4)) == [("198.51.100.1", OTHER, None)]
    assert defaults(ours.routes(6)) == [("fe80::a", OTHER, 1024)]

    # The rollback: deleting what the refused step never added is no failure.
    ours(lambda net: net.restore(snapshot, plan))
    assert ours.view() == was
    theirs.batch([step.command() for step in restore_steps(snapshot, plan)], force=True)
    assert ours.view(macs=False) == theirs.view(macs=False)


def test_a_link_that_does_not_exist_is_named_and_nothing_changes(pod: Pod) -> None:
    was = pod.view()
    with pytest.raises(ApplyError) as caught:
        pod(lambda net: net.configure(dual_plan("nope0"), ()))
    assert str(caught.value).startswith("failed to link set dev nope0 up: ")
    with pytest.raises(ApplyError) as caught:
        pod(lambda net: net.configure(dual_plan("nope0"), (addr("192.0.2.50/24"),)))
    assert str(caught.value).startswith("failed to address del 192.0.2.50/24 dev nope0: ")
    assert pod.view() == was


def test_a_stale_address_already_gone_is_refused_first(pod: Pod) -> None:
    was = pod.view()
    with pytest.raises(ApplyError) as caught:
        pod(lambda net: net.configure(dual_plan(), (addr("192.0.2.77/24"),)))
    assert str(caught.value).startswith(
        f"failed to address del 192.0.2.77/24 dev {EGRESS}: Cannot assign requested address"
    )
    done = pod.batch([f"address del 192.0.2.77/24 dev {EGRESS}"])
    assert done.returncode != 0 and kernel_words(done.stderr) in caught.value.detail
    assert pod.view() == was


def test_a_restore_that_cannot_put_a_route_back_says_so_and_restores_the_rest(pod: Pod) -> None:
    plan = dual_plan()
    snapshot = pod(lambda net: net.snapshot(EGRESS, (4, 6), FORWARDING))
    pod(lambda net: net.configure(plan, ()))
    done = pod.ip("link", "del", OTHER)  # the link the pod's default routes went through
    assert done.returncode == 0, done.stderr
    with pytest.raises(ApplyError) as caught:
        pod(lambda net: net.restore(snapshot, plan))
    message = str(caught.value)
    assert message.startswith("failed to restore the previous network setup: ")
    assert f"route replace 0.0.0.0/0 via 198.51.100.1 dev {OTHER}: " in message
    assert f"route replace ::/0 via fe80::a dev {OTHER} metric 1024: " in message
    assert " del " not in message
    link = pod.link()
    assert (
        "UP" not in link["flags"] and [a for a in link["addr_info"] if a["scope"] == "global"] == []
    )
    assert defaults(pod.routes(4)) == [] and defaults(pod.routes(6)) == []


def test_restore_puts_back_a_stale_ipv6_address_of_a_link_that_was_down(
    pods: Callable[..., Pod],
) -> None:
    pod = pods(f"address add 2001:db8:1::50/64 dev {EGRESS}")
    plan = dual_plan()
    snapshot = pod(lambda net: net.snapshot(EGRESS, (4, 6), ()))
    assert snapshot.link is not None and snapshot.link.addresses == (addr("2001:db8:1::50/64"),)
    pod(lambda net: net.configure(plan, snapshot.link.addresses))
    pod(lambda net: net.restore(snapshot, plan))
    after = pod(lambda net: net.snapshot(EGRESS, (4, 6), ()))
    assert after.link == snapshot.link


def test_restore_puts_back_a_default_route_with_a_metric(pods: Callable[..., Pod]) -> None:
    pod = pods(
        f"route del default via 198.51.100.1 dev {OTHER}",
        f"route add default via 198.51.100.1 dev {OTHER} metric 100",
    )
    plan = dual_plan()
    was = defaults(pod.routes(4))
    assert was == [("198.51.100.1", OTHER, 100)]
    snapshot = pod(lambda net: net.snapshot(EGRESS, (4, 6), ()))
    pod(lambda net: net.configure(plan, ()))
    pod(lambda net: net.restore(snapshot, plan))
    assert defaults(pod.routes(4)) == was


def test_restore_removes_the_routers_default_route_beside_one_with_a_metric_on_an_up_link(
    pods: Callable[..., Pod],
) -> None:
    # The link is up with the source already on it (a CNI's static IPAM): a restore must take
    # the router's default route (metric 0) away again, not keep it beside the pod's (100).
    pod = pods(
        f"link set {EGRESS} up",
        f"address add 192.0.2.99/24 dev {EGRESS}",
        f"route del default via 198.51.100.1 dev {OTHER}",
        f"route add default via 198.51.100.1 dev {OTHER} metric 100",
    )
    plan = dual_plan()
    was = pod.view()
    snapshot = pod(lambda net: net.snapshot(EGRESS, (4, 6), ()))
    pod(lambda net: net.configure(plan, ()))
    assert ("192.0.2.1", EGRESS, None) in defaults(pod.routes(4))
    pod(lambda net: net.restore(snapshot, plan))
    assert defaults(pod.routes(4)) == [("198.51.100.1", OTHER, 100)]
    assert pod.view() == was


def test_restore_keeps_an_ipv6_address_of_the_plan_that_a_down_link_held(
    pods: Callable[..., Pod],
) -> None:
    # Taking the link down again drops every IPv6 address, the planned one included.
    pod = pods(f"address add 2001:db8:1::99/64 dev {EGRESS} nodad")
    plan = dual_plan()
    snapshot = pod(lambda net: net.snapshot(EGRESS, (4, 6), ()))
    assert snapshot.link is not None and snapshot.link.addresses == (addr("2001:db8:1::99/64"),)
    pod(lambda net: net.configure(plan, ()))
    pod(lambda net: net.restore(snapshot, plan))
    after = pod(lambda net: net.snapshot(EGRESS, (4, 6), ()))
    assert after.link == snapshot.link


def test_restore_puts_back_a_default_route_whose_gateway_only_a_host_route_reaches(
    pods: Callable[..., Pod],
) -> None:
    # A link set up by an earlier configuration: a source without prefix, its gateway reached
    # through the host route; the new one changes the source.
    pod = pods(
        f"link set {EGRESS} up",
        f"address add 192.0.2.50/32 dev {EGRESS}",
        f"route add 192.0.2.1/32 dev {EGRESS}",
        f"route replace default via 192.0.2.1 dev {EGRESS}",
    )
    plan = build_network(
        load_environment({**ENV, "EGRESS_SOURCE": "192.0.2.99", "EGRESS_GATEWAY": "192.0.2.1"})
    )
    was = pod.view()
    snapshot = pod(lambda net: net.snapshot(EGRESS, (4,), ()))
    pod(lambda net: net.configure(plan, (addr("192.0.2.50/32"),)))
    refused = None
    try:
        pod(lambda net: net.restore(snapshot, plan))
    except ApplyError as error:  # "route replace 0.0.0.0/0 via 192.0.2.1 dev eg0: ..."
        refused = str(error)
    assert refused is None
    assert pod.view() == was


# -- sysctls and carrier -------------------------------------------------------------------------


def test_set_sysctl_writes_the_namespaces_value_only(pod: Pod) -> None:
    key = "net/ipv4/ip_forward"
    host = Path(f"/proc/sys/{key}").read_text().strip()
    # A new namespace copies the host's value, which podman's netavark switches on: start at 0.
    write_sysctls(pod.ns, [(key, "0")])
    assert pod.sysctl(key) == "0"
    pod(lambda net: net.set_sysctl(key, "1"))
    assert pod.sysctl(key) == "1"
    assert pod(lambda net: net.snapshot(EGRESS, (4,), (key,))).sysctls == ((key, "1"),)
    assert Path(f"/proc/sys/{key}").read_text().strip() == host
    pod(lambda net: net.set_sysctl(f"net/ipv4/conf/{EGRESS}/rp_filter", "2"))
    assert pod.sysctl(f"net/ipv4/conf/{EGRESS}/rp_filter") == "2"
    with pytest.raises(ApplyError, match=r"^failed to set net\.ipv4\.no_such_sysctl=1: "):
        pod(lambda net: net.set_sysctl("net/ipv4/no_such_sysctl", "1"))


CARRIER_PROBE = f"""
import json, subprocess
from egress_router.netlink.rtnl import RtNetlink
net = RtNetlink()
def look():
    link = net.snapshot("{EGRESS}", (4,), ()).link
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
    # has_carrier, then the snapshot's up and carrier (ip's UP and LOWER_UP)
    assert seen == {
        "down": [None, False, False],  # a link that is down cannot tell
        "up": [True, True, True],
        "far end down": [False, True, False],
        "missing": None,
    }
    assert set(pod.link()["flags"]) & {"UP", "LOWER_UP"} == {"UP"}
