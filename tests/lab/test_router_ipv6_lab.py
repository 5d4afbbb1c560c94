"""The router dual-stack, end to end: one IPv4 and one IPv6 source, rules of both families,
checked at the external servers (which answered, which source they saw)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from egress_router.lab import Lab, seed_env
from egress_router.lab import addresses as A
from egress_router.lab.wirings import WIRINGS

pytestmark = pytest.mark.lab

SERVERS = [
    ("203.0.113.25", 80, "tcp"),
    ("2001:db8:2::25", 80, "tcp"),
    ("2001:db8:2::25", 5353, "udp"),
    ("2001:db8:2::26", 80, "tcp"),
    ("2001:db8:2::27", 5000, "tcp"),
]
DUAL_STACK = {
    "EGRESS_SOURCE": f"{A.SOURCE}/24,{A.SOURCE6}/64",
    "EGRESS_GATEWAY": f"{A.GATEWAY},{A.GATEWAY6}",
    "EGRESS_DESTINATION": (
        "80   tcp 203.0.113.25\n"
        "80   tcp 2001:db8:2::25\n"
        "8080 tcp 2001:db8:2::26 80\n"
        "53   udp 2001:db8:2::25 5353\n"
        "2001:db8:2::27\n"
    ),
}


@pytest.fixture(scope="module", params=WIRINGS)
def lab6(request: pytest.FixtureRequest) -> Iterator[Lab]:
    with Lab(ipv6=True, wiring=request.param) as built:
        built.serve(SERVERS)
        yield built


@pytest.fixture
def dual_stack(lab6: Lab) -> Lab:
    lab6.reset_router()
    lab6.exec(
        "gw",
        [
            "ip",
            "neigh",
            "replace",
            A.SOURCE6,
            "lladdr",
            "02:00:00:00:00:01",
            "dev",
            "lan0",
            "nud",
            "stale",
        ],
    )
    done = lab6.run_router(seed_env("init", **DUAL_STACK))
    assert done.returncode == 0, done.stderr
    return lab6


@pytest.mark.parametrize(
    ("port", "protocol", "server"),
    [
        (80, "tcp", ("2001:db8:2::25", 80)),
        (8080, "tcp", ("2001:db8:2::26", 80)),
        (53, "udp", ("2001:db8:2::25", 5353)),
        (5000, "tcp", ("2001:db8:2::27", 5000)),
    ],
    ids=["same-port", "remote-port", "udp", "fallback"],
)
def test_ipv6_rules_reach_their_servers_from_the_ipv6_source(
    dual_stack: Lab, port: int, protocol: str, server: tuple[str, int]
) -> None:
    probe = dual_stack.connect(port, protocol, address=dual_stack.router_pod_ip6)
    assert (probe.ok, probe.server, probe.source) == (True, server, A.SOURCE6), probe


def test_the_same_port_goes_to_each_family_s_own_destination(dual_stack: Lab) -> None:
    v4 = dual_stack.connect(80)
    assert (v4.server, v4.source) == (("203.0.113.25", 80), A.SOURCE)
    # IPv4 has no fallback: only the IPv6 one exists, so other IPv4 ports are refused.
    assert dual_stack.connect(5000).error == "refused"


def test_the_router_switches_ipv6_forwarding_on_and_announces_the_ipv6_source(
    dual_stack: Lab,
) -> None:
    assert dual_stack.sysctl("router", "net/ipv6/conf/all/forwarding") == "1"
    entry = dual_stack.exec("gw", ["ip", "-6", "neigh", "show", A.SOURCE6, "dev", "lan0"]).stdout
    assert dual_stack.mac("router", "macvlan0") in entry, entry


def test_an_ipv6_only_router_behind_a_link_local_gateway(lab6: Lab) -> None:
    # IPv6 gateways are usually known by their link-local address, as a router advertises it.
    lab6.reset_router()
    shown = lab6.exec("gw", ["ip", "-6", "-br", "address", "show", "dev", "lan0", "scope", "link"])
    gateway = shown.stdout.split()[2].split("/")[0]
    assert gateway.startswith("fe80:")
    done = lab6.run_router(
        seed_env(
            "init",
            EGRESS_SOURCE=f"{A.SOURCE6}/64",
            EGRESS_GATEWAY=gateway,
            EGRESS_DESTINATION="8080 tcp 2001:db8:2::26 80\n",
        )
    )
    assert done.returncode == 0, done.stderr
    probe = lab6.connect(8080, address=lab6.router_pod_ip6)
    assert probe.server == ("2001:db8:2::26", 80) and probe.source == A.SOURCE6


IPV6_ONLY = {
    "EGRESS_SOURCE": f"{A.SOURCE6}/64",
    "EGRESS_GATEWAY": A.GATEWAY6,
    "EGRESS_DESTINATION": "8080 tcp 2001:db8:2::26 80\n",
}


def test_an_ipv6_gateway_that_does_not_answer_is_named(lab6: Lab) -> None:
    lab6.reset_router()
    silence = "table ip6 mute {\n chain input {\n type filter hook input priority 0;\n icmpv6 type nd-neighbor-solicit drop\n }\n}\n"
    lab6.exec("gw", ["nft", "-f", "-"], input=silence)
    try:
        done = lab6.run_router(seed_env("init", **IPV6_ONLY))
    finally:
        lab6.exec("gw", ["nft", "delete", "table", "ip6", "mute"], check=False)
    assert done.returncode == 0, done.stderr
    assert f"the gateway {A.GATEWAY6} did not answer neighbour solicitation on macvlan0" in done.stderr


def test_an_ipv6_gateway_that_answers_raises_no_warning(lab6: Lab) -> None:
    lab6.reset_router()
    done = lab6.run_router(seed_env("init", **IPV6_ONLY))
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr


def test_another_host_holding_the_ipv6_source_is_detected(lab6: Lab) -> None:
    lab6.reset_router()
    lab6.exec("gw", ["ip", "address", "add", f"{A.SOURCE6}/128", "dev", "lan0", "nodad"])
    try:
        done = lab6.run_router(seed_env("init", **IPV6_ONLY))
    finally:
        lab6.exec("gw", ["ip", "address", "del", f"{A.SOURCE6}/128", "dev", "lan0"], check=False)
    assert done.returncode == 0, done.stderr
    assert f"another host ({lab6.mac('gw', 'lan0')}) answers for {A.SOURCE6}" in done.stderr
