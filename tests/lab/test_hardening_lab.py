"""Hardening, on the real kernel: no open relay, least privilege, SCTP, and faults that explain
themselves while leaving the previous state in force."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

from egress_router.lab import Lab, seed_env

pytestmark = pytest.mark.lab

SOURCE = "192.0.2.99"


def ok(lab: Lab, env: dict[str, str]) -> None:
    done = lab.run_router(env)
    assert done.returncode == 0, done.stderr


def kernel_state(lab: Lab) -> tuple[str, str, str, str]:
    """The table without its counters, the egress addresses, the routes of both families in
    the main table and the router's, and the rules."""
    table = lab.nft_table() or ""
    table = "\n".join(line for line in table.splitlines() if "packets" not in line)
    addresses = lab.exec("router", ["ip", "address", "show", "dev", "macvlan0"]).stdout
    addresses = "\n".join(line for line in addresses.splitlines() if "valid_lft" not in line)
    routes = "".join(
        lab.exec("router", ["ip", family, "route", "show", "table", table_id], check=False).stdout
        for family in ("-4", "-6")
        for table_id in ("main", "2430")
    )
    rules = lab.exec("router", ["ip", "rule"]).stdout + lab.exec("router", ["ip", "-6", "rule"]).stdout
    return table, addresses, routes, rules


def test_a_client_routing_through_the_router_reaches_no_address_that_no_rule_names(router_lab: Lab) -> None:
    ok(router_lab, seed_env())  # with the seed's fallback in force
    # The client's default route is the router: without the forward filter, a connection
    # straight to an external address would leave with the trusted source address.
    direct = router_lab.connect(80, address="203.0.113.25", timeout=1.0)
    assert not direct.ok, f"forwarded to {direct.server} with source {direct.source}"
    assert router_lab.connect(80).source == SOURCE  # the rule itself still works


@pytest.fixture
def client_listener(router_lab: Lab) -> Iterator[int]:
    server = router_lab.socket("client")
    server.bind((router_lab.client_ip, 0))
    server.listen(4)
    server.settimeout(0.2)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def test_the_lan_cannot_open_connections_into_the_pod_network(router_lab: Lab, client_listener: int) -> None:
    ok(router_lab, seed_env())
    router_lab.exec("gw", ["ip", "route", "replace", "198.51.100.0/24", "via", SOURCE])
    try:
        attempt = router_lab.socket("gw")
        attempt.settimeout(1.0)
        with pytest.raises(OSError):
            attempt.connect((router_lab.client_ip, client_listener))
        attempt.close()
    finally:
        router_lab.exec("gw", ["ip", "route", "del", "198.51.100.0/24"], check=False)
    assert router_lab.connect(8080).source == SOURCE


def test_net_admin_and_net_raw_are_all_the_router_needs(router_lab: Lab) -> None:
    env = router_lab.router_env(seed_env())
    only = "--bounding-set=-all,+net_admin,+net_raw"
    done = router_lab.exec(
        "router", ["setpriv", only, sys.executable, "-m", "egress_router"], env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert router_lab.connect(8443).server == ("203.0.113.26", 443)
    assert router_lab.connect(8443).source == SOURCE


def test_a_missing_capability_is_named_and_nothing_is_applied(router_lab: Lab) -> None:
    env = router_lab.router_env(seed_env())
    done = router_lab.exec(
        "router",
        ["setpriv", "--bounding-set=-all,+net_raw", sys.executable, "-m", "egress_router"],
        env=env,
        check=False,
    )
    assert done.returncode == 1
    assert "missing capability NET_ADMIN" in done.stderr and "Traceback" not in done.stderr
    assert router_lab.nft_table() is None


def test_sctp_rules_are_loaded(router_lab: Lab) -> None:
    ok(router_lab, seed_env(EGRESS_DESTINATION="9000 sctp 203.0.113.25 9001\n9000 tcp 203.0.113.26\n"))
    listing = router_lab.exec("router", ["nft", "list", "map", "inet", "egress_router", "sctp4"]).stdout
    assert "9000" in listing and "203.0.113.25 . 9001" in listing


def test_a_down_egress_interface_is_brought_up(router_lab: Lab) -> None:
    assert "DOWN" in router_lab.exec("router", ["ip", "-br", "link", "show", "macvlan0"]).stdout
    ok(router_lab, seed_env())
    assert router_lab.connect(80).source == SOURCE


def test_an_egress_interface_without_carrier_is_reported(router_lab: Lab) -> None:
    router_lab.exec("node", ["ip", "link", "set", "nic0", "down"])
    try:
        done = router_lab.run_router(seed_env())
    finally:
        router_lab.exec("node", ["ip", "link", "set", "nic0", "up"])
        router_lab.restore_routes("node")  # the node's routes to the other node's pods
    assert done.returncode == 0, done.stderr
    assert "macvlan0 has no carrier" in done.stderr


def test_a_gateway_that_does_not_answer_arp_is_named(router_lab: Lab) -> None:
    router_lab.exec("gw", ["ip", "link", "set", "lan0", "arp", "off"])
    try:
        done = router_lab.run_router(seed_env())
    finally:
        router_lab.exec("gw", ["ip", "link", "set", "lan0", "arp", "on"])
    assert done.returncode == 0, done.stderr
    assert "the gateway 192.0.2.1 did not answer ARP on macvlan0" in done.stderr


def test_another_host_holding_the_source_address_is_detected(router_lab: Lab) -> None:
    # The gateway's LAN interface also claims the source, as a dying router pod's would.
    router_lab.exec("gw", ["ip", "address", "add", f"{SOURCE}/32", "dev", "lan0"])
    try:
        done = router_lab.run_router(seed_env())
    finally:
        router_lab.exec("gw", ["ip", "address", "del", f"{SOURCE}/32", "dev", "lan0"])
    assert done.returncode == 0, done.stderr
    other = router_lab.mac("gw", "lan0")
    assert f"another host ({other}) answers for {SOURCE}" in done.stderr


def test_a_small_conntrack_table_is_reported(router_lab: Lab) -> None:
    done = router_lab.run_router(seed_env(EGRESS_ROUTER_EXPECTED_CONNECTIONS=str(10**12)))
    assert done.returncode == 0, done.stderr
    assert "nf_conntrack_max is" in done.stderr and "below the 1000000000000" in done.stderr


def test_nft_missing_is_named_and_nothing_is_applied(router_lab: Lab) -> None:
    with tempfile.TemporaryDirectory() as bin_dir:
        os.symlink("/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "/sbin/ip", f"{bin_dir}/ip")
        done = router_lab.run_router({**seed_env(), "PATH": bin_dir})
    assert done.returncode == 1
    assert "the nft command was not found" in done.stderr and "apt-get install nftables" in done.stderr
    _, addresses, _, _ = kernel_state(router_lab)
    assert SOURCE not in addresses


@pytest.fixture
def ipv6_refused_on_macvlan0(router_lab: Lab) -> Iterator[Lab]:
    """Make the kernel refuse an IPv6 address on macvlan0: a dual-stack config then fails in
    the middle of the network step, after the table, the sysctls and the IPv4 address."""
    key = "net/ipv6/conf/macvlan0/disable_ipv6"
    router_lab.exec("router", ["sysctl", "-qw", f"{key.replace('/', '.')}=1"])
    try:
        yield router_lab
    finally:
        router_lab.exec("router", ["sysctl", "-qw", f"{key.replace('/', '.')}=0"], check=False)


DUAL_STACK_ON_A_NEW_ADDRESS = {
    "EGRESS_SOURCE": "192.0.2.98/24,2001:db8:1::98/64",
    "EGRESS_GATEWAY": "192.0.2.1,2001:db8:1::1",
    "EGRESS_DESTINATION": "9999 tcp 203.0.113.25 80\n",
}


def test_a_failure_part_way_restores_the_running_router(ipv6_refused_on_macvlan0: Lab) -> None:
    lab = ipv6_refused_on_macvlan0
    ok(lab, seed_env())
    before = kernel_state(lab)
    done = lab.run_router(seed_env(**DUAL_STACK_ON_A_NEW_ADDRESS))
    assert done.returncode == 1, done.stderr
    assert "apply error: failed to address add 2001:db8:1::98/64 noprefixroute dev macvlan0 nodad" in done.stderr
    assert "the previous state is restored" in done.stderr
    assert kernel_state(lab) == before
    assert lab.sysctl("router", "net/ipv6/conf/all/forwarding") == "0"
    assert lab.connect(8080).source == SOURCE
    assert lab.connect(5000).server == ("203.0.113.27", 5000)
    assert not lab.connect(9999, timeout=1.0).ok


def test_a_failure_part_way_on_a_new_pod_leaves_it_as_it_was(ipv6_refused_on_macvlan0: Lab) -> None:
    lab = ipv6_refused_on_macvlan0
    before = kernel_state(lab)
    done = lab.run_router(seed_env(**DUAL_STACK_ON_A_NEW_ADDRESS))
    assert done.returncode == 1, done.stderr
    assert kernel_state(lab) == before
    assert lab.nft_table() is None
    assert lab.sysctl("router", "net/ipv4/ip_forward") == "0"


def test_unmapped_udp_is_refused_without_a_fallback(router_lab: Lab) -> None:
    ok(router_lab, seed_env(EGRESS_DESTINATION="80 tcp 203.0.113.25\n"))
    probe = router_lab.connect(5001, protocol="udp", timeout=1.0)
    assert not probe.ok and probe.error == "refused"
    assert socket.has_ipv6  # the kernel has IPv6: the dual-stack lab tests depend on it


def test_health_and_metrics_answer_the_pod_network_but_not_the_lan(router_lab: Lab) -> None:
    router = router_lab.start_router(seed_env("legacy"))
    try:
        inside = _connect_when_listening(router_lab, ("198.51.100.2", 9090))
        inside.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert inside.recv(100).startswith(b"HTTP/1.0 200")
        inside.close()
        outside = router_lab.socket("gw")
        outside.settimeout(1.0)
        with pytest.raises(OSError):  # dropped: a timeout, not even a refusal
            outside.connect((SOURCE, 9090))
        outside.close()
    finally:
        router.terminate()
        router.wait(5)


def _connect_when_listening(lab: Lab, address: tuple[str, int], within: float = 10.0) -> socket.socket:
    deadline = time.monotonic() + within
    while True:
        sock = lab.socket("client")
        sock.settimeout(2)
        try:
            sock.connect(address)
            return sock
        except ConnectionRefusedError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
