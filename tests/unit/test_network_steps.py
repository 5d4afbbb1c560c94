"""The network steps between two states of the router's part of its namespace (shown as the
`ip` lines they stand for): to the plan, back after a failure, and nothing when equal."""

from __future__ import annotations

import ipaddress

from egress_router.config import load_environment
from egress_router.network.fake import FakeLink, FakeNet, pod_network
from egress_router.network.state import MAIN_TABLE, Address, LinkState, NetState, Route, converge, differences
from egress_router.plan import build_network
from egress_router.schema import ROUTE_TABLE

DUAL = {
    "EGRESS_SOURCE": "192.0.2.99/24,2001:db8:1::99/64",
    "EGRESS_GATEWAY": "192.0.2.1,fe80::1",
    "EGRESS_DESTINATION": "80 tcp 203.0.113.25",
}
LINK = LinkState("macvlan0", False, False, "02:00:00:00:00:01", 1500)


def lines(current: NetState, wanted: NetState) -> list[str]:
    return [str(step) for step in converge(current, wanted)]


def test_a_new_pod_gets_its_address_without_a_subnet_route_and_routes_in_the_routers_table() -> None:
    network = build_network(load_environment(DUAL))
    assert lines(NetState(LINK), network.wanted(LINK)) == [
        "link set dev macvlan0 up",
        "address add 192.0.2.99/24 noprefixroute dev macvlan0",
        "address add 2001:db8:1::99/64 noprefixroute dev macvlan0 nodad",
        "route replace 192.0.2.0/24 dev macvlan0 scope link src 192.0.2.99 table 2430",
        "-6 route replace 2001:db8:1::/64 dev macvlan0 src 2001:db8:1::99 table 2430",
        "route replace default via 192.0.2.1 dev macvlan0 src 192.0.2.99 table 2430",
        # a link-local gateway needs no route to be reached
        "-6 route replace default via fe80::1 dev macvlan0 src 2001:db8:1::99 table 2430",
        "rule add priority 2430 fwmark 0x2430 lookup 2430",
        "-6 rule add priority 2430 fwmark 0x2430 lookup 2430",
        "sysctl net.ipv4.ip_forward=1",
        "sysctl net.ipv6.conf.all.forwarding=1",
        "sysctl net.ipv4.conf.macvlan0.rp_filter=2",
    ]


def test_without_a_prefix_the_gateway_is_reached_by_a_host_route() -> None:
    network = build_network(load_environment({**DUAL, "EGRESS_SOURCE": "192.0.2.99", "EGRESS_GATEWAY": "192.0.2.1"}))
    routes = [str(r) for r in network.routes]
    assert routes == [
        "192.0.2.1/32 dev macvlan0 scope link src 192.0.2.99 table 2430",
        "default via 192.0.2.1 dev macvlan0 src 192.0.2.99 table 2430",
    ]


def test_the_same_state_needs_no_step_and_shows_no_drift() -> None:
    network = build_network(load_environment(DUAL))
    wanted = network.wanted(LINK)
    assert converge(wanted, wanted) == [] and differences(wanted, wanted) == []


def test_a_changed_route_is_replaced_in_place_never_deleted_first() -> None:
    network = build_network(load_environment(DUAL))
    wanted = network.wanted(LINK)
    old = Route(4, ROUTE_TABLE, "default", "192.0.2.254", "macvlan0", "global", 0, "192.0.2.99")
    current = wanted._replace(routes=tuple(old if r.destination == "default" and r.family == 4 else r for r in wanted.routes))
    assert lines(current, wanted) == ["route replace default via 192.0.2.1 dev macvlan0 src 192.0.2.99 table 2430"]
    assert differences(current, wanted) == ["route default via 192.0.2.1 dev macvlan0 src 192.0.2.99 table 2430 is missing or altered"]


def test_what_the_router_does_not_want_is_removed_and_a_down_link_loses_its_ipv6_addresses() -> None:
    up = LINK._replace(up=True)
    v6 = Address(ipaddress.ip_interface("2001:db8:1::99/64"))
    stale = Route(4, MAIN_TABLE, "default", "192.0.2.1", "macvlan0", "global", 0)
    current = NetState(up, (v6,), (stale,))
    wanted = NetState(LINK, (v6,))  # back to a down link that held the address
    assert lines(current, wanted) == [
        "link set dev macvlan0 down",
        "route del default via 192.0.2.1 dev macvlan0",
        "address add 2001:db8:1::99/64 noprefixroute dev macvlan0 nodad",
    ]


def test_steps_run_on_the_fake_as_on_the_kernel_and_a_rollback_is_the_same_function() -> None:
    net = FakeNet(links={"macvlan0": FakeLink(), "eth0": FakeLink(up=True)}, routes=pod_network())
    network = build_network(load_environment(DUAL))
    before = net.read(network.scope)
    assert before.link is not None
    net.fail_on = "route replace default via 192.0.2.1"
    try:
        net.apply(converge(before, network.wanted(before.link)))
    except Exception as error:  # noqa: BLE001 -- the refusal is the point
        assert "failed to route replace default via 192.0.2.1" in str(error)
    half = net.read(network.scope)
    assert half != before and half.up
    net.apply(converge(half, before), keep_going=True)
    assert net.read(network.scope) == before
    assert net.routes == pod_network()  # the pod's own routes were never touched
