"""The network steps the router takes (shown as the `ip -batch` lines they stand for):
replace-only to set up, and the way back."""

from __future__ import annotations

import ipaddress

from egress_router.config import load_environment
from egress_router.model import IPInterface
from egress_router.network import LinkState, NetSnapshot, SavedRoute, restore_steps, setup_steps
from egress_router.plan import NetworkPlan, build_network


def batch(network: NetworkPlan, stale: tuple[IPInterface, ...]) -> list[str]:
    return [step.command() for step in setup_steps(network, stale)]


def restore_batch(snapshot: NetSnapshot, network: NetworkPlan) -> list[str]:
    return [step.command() for step in restore_steps(snapshot, network)]


DUAL = {
    "EGRESS_SOURCE": "192.0.2.99/24,2001:db8:1::99/64",
    "EGRESS_GATEWAY": "192.0.2.1,2001:db8:1::1",
    "EGRESS_DESTINATION": "80 tcp 203.0.113.25",
}


def test_setup_is_made_of_replace_verbs_and_skips_dad_for_ipv6() -> None:
    network = build_network(load_environment(DUAL))
    stale = (ipaddress.ip_interface("192.0.2.50/24"),)
    assert batch(network, stale) == [
        "address del 192.0.2.50/24 dev macvlan0",
        "link set dev macvlan0 up",
        "address replace 192.0.2.99/24 dev macvlan0",
        "address replace 2001:db8:1::99/64 dev macvlan0 nodad",
        "route replace 192.0.2.1/32 dev macvlan0",
        "route replace default via 192.0.2.1 dev macvlan0",
        "route replace 2001:db8:1::1/128 dev macvlan0",
        "route replace default via 2001:db8:1::1 dev macvlan0",
    ]


def test_restore_puts_back_addresses_routes_and_link_state() -> None:
    network = build_network(load_environment(DUAL))
    old = ipaddress.ip_interface("192.0.2.50/24")
    snapshot = NetSnapshot(
        link=LinkState("macvlan0", False, False, "02:00:00:00:00:01", 1500, (old,)),
        routes=(
            SavedRoute(4, "default", "198.51.100.1", "eth0"),
            SavedRoute(4, "192.0.2.7", None, "macvlan0", "link"),
        ),
        sysctls=(("net/ipv4/ip_forward", "0"),),
    )
    assert restore_batch(snapshot, network) == [
        "address del 192.0.2.99/24 dev macvlan0",
        "address del 2001:db8:1::99/64 dev macvlan0",
        # down before the addresses go back: a link going down drops its IPv6 addresses
        "link set dev macvlan0 down",
        "address replace 192.0.2.50/24 dev macvlan0",
        "route del 192.0.2.1/32 dev macvlan0",
        # the saved default route went through eth0: ours replaced it, and goes first
        "route del 0.0.0.0/0 via 192.0.2.1 dev macvlan0",
        "route del 2001:db8:1::1/128 dev macvlan0",
        "route del ::/0 via 2001:db8:1::1 dev macvlan0",
        # routes without a gateway first: they may be what makes a gateway reachable
        "route replace 192.0.2.7 dev macvlan0 scope link",
        "route replace 0.0.0.0/0 via 198.51.100.1 dev eth0",
    ]


def test_a_host_route_already_there_is_not_deleted_on_the_way_back() -> None:
    # As RtNetlink reads it back: always with its prefix length, as the plan writes it.
    route = SavedRoute(4, "192.0.2.1/32", None, "macvlan0", "link")
    network = build_network(load_environment(DUAL))
    snapshot = NetSnapshot(LinkState("macvlan0", True, True, "02:00:00:00:00:01", 1500, ()), (route,), ())
    assert "route del 192.0.2.1/32 dev macvlan0" not in restore_batch(snapshot, network)
    assert "route replace 192.0.2.1/32 dev macvlan0 scope link" in restore_batch(snapshot, network)


def test_a_route_left_exactly_as_the_plan_puts_it_is_not_deleted_on_the_way_back() -> None:
    network = build_network(load_environment(DUAL))
    ours = SavedRoute(4, "default", "192.0.2.1", "macvlan0")  # metric 0, as the kernel gives it
    with_metric = SavedRoute(4, "default", "192.0.2.1", "macvlan0", metric=100)
    link = LinkState("macvlan0", True, True, "02:00:00:00:00:01", 1500, ())
    kept = restore_batch(NetSnapshot(link, (ours,), ()), network)
    assert "route del 0.0.0.0/0 via 192.0.2.1 dev macvlan0" not in kept
    # The same route with another metric was joined by ours, not replaced: ours must go.
    joined = restore_batch(NetSnapshot(link, (with_metric,), ()), network)
    assert "route del 0.0.0.0/0 via 192.0.2.1 dev macvlan0" in joined
    assert "route replace 0.0.0.0/0 via 192.0.2.1 dev macvlan0 metric 100" in joined
