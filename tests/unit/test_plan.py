"""Planning: config -> network setup and the nftables table, as text a user can read."""

from __future__ import annotations

import pytest

from egress_router.config import load_environment
from egress_router.nft import Element, Transaction
from egress_router.plan import build_plan, describe

SEED = "80   tcp 203.0.113.25\n8080 tcp 203.0.113.26 80\n8443 tcp 203.0.113.26 443\n203.0.113.27\n"


def plan_for(**env: str):  # type: ignore[no-untyped-def]
    base = {
        "EGRESS_SOURCE": "192.0.2.99/24",
        "EGRESS_GATEWAY": "192.0.2.1",
        "EGRESS_DESTINATION": SEED,
        "EGRESS_ROUTER_MODE": "init",
    }
    return build_plan(load_environment({**base, **env}))


def script(**env: str) -> str:
    tx = Transaction()
    table = plan_for(**env).table
    assert table is not None
    tx.replace_table(table)
    return str(tx)


def test_seed_rules_become_map_elements_not_rules() -> None:
    text = script()
    assert "add element inet egress_router tcp4 { 80 : 203.0.113.25 . 80, 8080 : 203.0.113.26 . 80, 8443 : 203.0.113.26 . 443 }" in text
    assert text.count("dnat ip to tcp dport map @tcp4") == 1
    assert "203.0.113.25" not in text.split("add element")[0]  # the chains never name a destination


def test_fallback_keeps_the_port_and_counts() -> None:
    assert "meta nfproto ipv4 counter name fallback4 dnat ip to 203.0.113.27" in script()


def test_without_fallback_other_ports_are_refused() -> None:
    text = script(EGRESS_DESTINATION="80 tcp 203.0.113.25")
    assert "dnat ip to 203.0.113" not in text.replace("tcp dport map", "")
    assert "meta l4proto tcp reject with tcp reset" in text


def test_snat_to_the_source_on_the_egress_interface_only() -> None:
    text = script(EGRESS_INTERFACE="net1")
    assert 'oifname "net1" meta nfproto ipv4 snat ip to 192.0.2.99' in text


def test_only_connections_from_the_pod_side_to_the_router_are_redirected() -> None:
    text = script(EGRESS_POD_INTERFACE="eth9")
    pre = text.split("chain prerouting")[1]
    assert pre.index('iifname != "eth9" return') < pre.index("dnat")
    assert pre.index("fib daddr type != local return") < pre.index("dnat")


def test_forwarding_is_limited_to_redirected_connections() -> None:
    fwd = script().split("chain forward")[1]
    assert "policy drop" in fwd
    assert 'iifname "eth0" oifname "macvlan0" ct status dnat accept' in fwd


def test_legacy_mode_never_redirects_its_http_port() -> None:
    legacy = script(EGRESS_ROUTER_MODE="legacy")
    pre = legacy.split("chain prerouting")[1]
    assert pre.index("tcp dport 9090 return") < pre.index("dnat")
    assert "tcp dport 9090 return" not in script(EGRESS_ROUTER_MODE="init")
    assert "9090" not in script(EGRESS_ROUTER_MODE="legacy", EGRESS_ROUTER_HTTP_PORT="0")


def test_network_without_prefix_is_a_host_route_to_the_gateway() -> None:
    network = plan_for(EGRESS_SOURCE="192.0.2.99").network
    assert [str(a) for a in network.addresses] == ["192.0.2.99/32 noprefixroute"]
    assert [(r.table, r.destination, r.via) for r in network.routes] == [
        (2430, "192.0.2.1/32", None),
        (2430, "default", "192.0.2.1"),
    ]
    assert network.sysctls == (("net/ipv4/ip_forward", "1"), ("net/ipv4/conf/macvlan0/rp_filter", "2"))


def test_proxy_modes_plan_the_network_and_no_nat() -> None:
    plan = plan_for(EGRESS_ROUTER_MODE="dns-proxy")
    assert plan.network.addresses and plan.table.maps == ()
    assert "nat" not in plan.table.body and "policy drop" in plan.table.body.split("chain forward")[1]


def test_redirected_connections_are_marked_after_dnat_and_their_syns_clamped() -> None:
    from egress_router.plan import Facts, build_plan

    config = load_environment(
        {"EGRESS_SOURCE": "192.0.2.99/24", "EGRESS_GATEWAY": "192.0.2.1", "EGRESS_DESTINATION": "80 tcp 203.0.113.25"}
    )
    body = build_plan(config, Facts(pod_mtu=1400, egress_mtu=1500)).table.body
    mark = body.split("chain redirected")[1].split("}")[0]
    assert "hook prerouting priority dstnat + 10" in mark
    assert 'iifname "eth0" ct direction original ct status dnat ct mark != 0x2431 meta mark set 0x2430' in mark
    forward = body.split("chain forward")[1]
    # The narrower side (the pod's 1400) less the headers, for both SYNs of a connection.
    clamp = "ct status dnat tcp flags syn / syn,rst tcp option maxseg size > 1360 tcp option maxseg size set 1360"
    assert f"meta nfproto ipv4 {clamp}" in forward
    assert "tcp option maxseg size > 1340 tcp option maxseg size set 1340" in forward


def test_dual_stack_plans_both_families() -> None:
    plan = plan_for(
        EGRESS_SOURCE="192.0.2.99/24,2001:db8:1::99/64",
        EGRESS_GATEWAY="192.0.2.1,2001:db8:1::1",
        EGRESS_DESTINATION="80 tcp 203.0.113.25\n80 tcp 2001:db8:2::25 8080\n2001:db8:2::27\n",
    )
    assert plan.table is not None
    assert dict(plan.table.map("tcp6").elements) == {80: Element(80, "2001:db8:2::25", 8080)}
    assert "snat ip6 to 2001:db8:1::99" in plan.table.body
    assert "counter name fallback6 dnat ip6 to 2001:db8:2::27" in plan.table.body
    assert ("net/ipv6/conf/all/forwarding", "1") in plan.network.sysctls


def test_the_table_skeleton_does_not_depend_on_the_mappings() -> None:
    a = plan_for(EGRESS_DESTINATION="80 tcp 203.0.113.25\n203.0.113.27").table
    b = plan_for(EGRESS_DESTINATION="81 udp 203.0.113.26 99\n203.0.113.27").table
    assert a is not None and b is not None
    assert a.skeleton() == b.skeleton() and a != b


def test_describe_says_what_happens() -> None:
    config = load_environment(
        {"EGRESS_SOURCE": "192.0.2.99", "EGRESS_GATEWAY": "192.0.2.1", "EGRESS_DESTINATION": "80 tcp 203.0.113.25"}
    )
    assert describe(config) == [
        "source 192.0.2.99/32 on macvlan0 via gateway 192.0.2.1",
        "redirected connections leave through macvlan0 (mark 0x2430, table 2430); everything else keeps the pod's own routes",
        "redirect 80/tcp -> 203.0.113.25 port 80",
        "refuse connections to any other port",
        "serve health and metrics on port 9090/tcp",
    ]


def test_nothing_on_the_router_answers_new_connections_from_the_lan() -> None:
    inp = script(EGRESS_ROUTER_MODE="legacy").split("chain input")[1]
    drop = 'iifname "macvlan0" ct state new meta l4proto { tcp, udp, sctp } drop'
    assert drop in inp and inp.index(drop) < inp.index("tcp dport 9090 return")


@pytest.mark.parametrize(
    ("device", "every", "written"),
    [
        ("0", "1", True),  # the node's strict mode, through `all`
        ("1", "0", True),  # inherited by the interface
        (None, None, True),  # unknown counts as strict
        ("0", "0", False),  # off: left off (loose would need a route back to every destination)
        ("2", "1", False),  # loose already
        ("0", "2", False),
    ],
)
def test_reverse_path_filtering_is_made_loose_only_where_it_is_strict(device, every, written) -> None:  # type: ignore[no-untyped-def]
    from egress_router.network.state import LinkState, NetState
    from egress_router.plan import Facts, build_network

    env = {"EGRESS_SOURCE": "192.0.2.99/24", "EGRESS_GATEWAY": "192.0.2.1", "EGRESS_DESTINATION": "80 tcp 203.0.113.25"}
    config = load_environment(env)
    state = NetState(
        LinkState("macvlan0", True, True, "", 1500),
        sysctls=(("net/ipv4/conf/macvlan0/rp_filter", device), ("net/ipv4/conf/all/rp_filter", every)),
    )
    sysctls = dict(build_network(config, Facts.of(state)).sysctls)
    assert (sysctls.get("net/ipv4/conf/macvlan0/rp_filter") == "2") is written


def test_only_legacy_counts_every_packet() -> None:
    """The per-port connection and byte sets are read by legacy's metrics and status; an init
    container is gone before anyone could read them, so its forward path does not update them."""
    legacy = plan_for(EGRESS_ROUTER_MODE="legacy").table.body
    init = plan_for().table.body
    assert "ct status dnat jump count" in legacy and "update @bytes_tcp4" in legacy
    assert "jump count" not in init and "bytes_tcp4" not in init and "conns_tcp4" not in init
    # Everything else of the forward path is the same: only redirected connections pass.
    assert "iifname \"eth0\" oifname \"macvlan0\" ct status dnat accept" in init
