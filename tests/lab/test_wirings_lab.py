"""The lab's pod wirings are what docs/lab.md says they are, proven without the router: each test
runs on every wiring (shared, calico, per-node; `wired_lab`) and in both families.

The router namespace here is just a pod: servers started in it stand for the router's eth0
side, and hand-made addresses on macvlan0 stand for what a router would add.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from egress_router.lab import Lab
from egress_router.lab import addresses as A
from egress_router.lab.netns import write_sysctls
from egress_router.lab.probe import Probe, parse_report, probe_tcp
from egress_router.lab.wirings import WIRINGS

pytestmark = pytest.mark.lab

POD_PORT = 7000  # a reporting server in the router pod, on its eth0 addresses
HEALTH_PORT = 8081  # an HTTP server there, as the router's health port
POD_DOWNLOAD, POD_UPLOAD = 9100, 9101
FAMILIES = pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])

# What each wiring's CNI gives the pods, written out here rather than read from lab/wirings.py:
# (router eth0 address, client eth0 address, router default gateway) per family.
PLAN: dict[str, dict[bool, tuple[str, str, str]]] = {
    "shared": {
        False: ("198.51.100.2/26", "198.51.100.3/26", "198.51.100.1"),
        True: ("2001:db8:3::2/64", "2001:db8:3::3/64", "fe80::1"),
    },
    "calico": {
        False: ("198.51.100.2/32", "198.51.100.3/32", "169.254.1.1"),
        True: ("2001:db8:3::2/128", "2001:db8:3::3/128", "fe80::1"),
    },
    "per-node": {
        False: ("198.51.100.2/26", "198.51.100.66/26", "198.51.100.1"),
        True: ("2001:db8:3:a::2/64", "2001:db8:3:b::3/64", "2001:db8:3:a::1"),
    },
}
# The router pod's main table, (destination, gateway), as its CNI leaves it.
ROUTES = {
    "shared": [("198.51.100.0/25", None), ("198.51.100.0/26", None), ("default", "198.51.100.1")],
    "calico": [("169.254.1.1", None), ("default", "169.254.1.1")],
    "per-node": [("198.51.100.0/26", None), ("default", "198.51.100.1")],
}
NODE_LAN = {"node": (A.NODE_IP, A.NODE_IP6), A.NODE_B: (A.NODE_B_IP, A.NODE_B_IP6)}


@pytest.fixture(scope="module")
def lab_options() -> dict[str, Any]:
    return {"ipv6": True}


@pytest.fixture(scope="module")
def pod_servers(wired_lab: Lab) -> Iterator[subprocess.Popen[str]]:
    lab = wired_lab
    endpoints = [
        (address, port, kind)
        for address in (lab.router_pod_ip, lab.router_pod_ip6)
        for port, kind in (
            (POD_PORT, "tcp"),
            (HEALTH_PORT, "http"),
            (POD_DOWNLOAD, "source"),
            (POD_UPLOAD, "sink"),
        )
    ]
    yield lab.serve(endpoints, max_seconds=300, role="router")


@pytest.fixture
def pod(wired_router_lab: Lab, pod_servers: subprocess.Popen[str]) -> Lab:
    """The wired lab, its router namespace a new pod, with servers on its eth0 addresses."""
    return wired_router_lab


def family(ipv6: bool) -> socket.AddressFamily:
    return socket.AF_INET6 if ipv6 else socket.AF_INET


def client_ip(lab: Lab, ipv6: bool) -> str:
    return lab.client_ip6 if ipv6 else lab.client_ip


def addresses(lab: Lab, role: str, ipv6: bool) -> list[str]:
    shown = json.loads(lab.exec(role, ["ip", "-j", "address", "show", "dev", "eth0"]).stdout)[0]
    family = "inet6" if ipv6 else "inet"
    return [
        f"{a['local']}/{a['prefixlen']}"
        for a in shown["addr_info"]
        if a["family"] == family and a.get("scope") == "global"
    ]


def default_routes(lab: Lab, ipv6: bool) -> list[dict[str, Any]]:
    done = lab.exec("router", ["ip", "-6" if ipv6 else "-4", "-j", "route", "show", "default"])
    routes: list[dict[str, Any]] = json.loads(done.stdout)
    return routes


def assert_reached(probe: Probe, server: tuple[str, int], source: str) -> None:
    assert probe.ok, probe
    assert probe.server == server and probe.source == source, probe


# -- addresses and routes ---------------------------------------------------------------------


@FAMILIES
def test_the_pods_are_addressed_as_their_cni_would(pod: Lab, ipv6: bool) -> None:
    router, client, _ = PLAN[pod.wiring.name][ipv6]
    assert addresses(pod, "router", ipv6) == [router]
    assert addresses(pod, "client", ipv6) == [client]


@FAMILIES
def test_the_router_pod_has_its_cnis_default_route_on_eth0(pod: Lab, ipv6: bool) -> None:
    _, _, gateway = PLAN[pod.wiring.name][ipv6]
    routes = default_routes(pod, ipv6)
    assert [(r.get("gateway"), r.get("dev")) for r in routes] == [(gateway, "eth0")]


def test_the_router_pods_routes_are_its_cnis(pod: Lab) -> None:
    # Calico's /32 pod reaches nothing on-link but its fake gateway; the shared subnet has the
    # whole cluster network on eth0.
    routes = json.loads(pod.exec("router", ["ip", "-4", "-j", "route", "show"]).stdout)
    assert sorted((r["dst"], r.get("gateway")) for r in routes) == ROUTES[pod.wiring.name]
    assert {r["dev"] for r in routes} == {"eth0"}


@FAMILIES
def test_the_router_pods_next_hop_is_its_node(pod: Lab, ipv6: bool) -> None:
    # Whatever the gateway's address (Calico's is on no interface at all), the frames go to the
    # host side of the router's veth: its node answers for it. The reply to the node's probe
    # takes the default route.
    assert pod.node_get(HEALTH_PORT, ipv6=ipv6).status == 200
    _, _, gateway = PLAN[pod.wiring.name][ipv6]
    shown = pod.exec("router", ["ip", "-j", "neigh", "show", "dev", "eth0", "to", gateway]).stdout
    entries = json.loads(shown)
    node_mac = pod.mac(pod.wiring.router.node, pod.wiring.router.veth)
    assert [e.get("lladdr") for e in entries] == [node_mac]


# -- who reaches the router pod ---------------------------------------------------------------


@FAMILIES
def test_the_client_reaches_the_router_pod_directly(pod: Lab, ipv6: bool) -> None:
    probe = pod.connect(POD_PORT, ipv6=ipv6)
    assert_reached(probe, (pod.address("pod", ipv6), POD_PORT), client_ip(pod, ipv6))


@FAMILIES
def test_the_client_reaches_the_router_pod_through_its_cluster_ip(pod: Lab, ipv6: bool) -> None:
    # DNAT only, as kube-proxy does for a pod: the router pod sees the client's own address.
    probe = pod.connect(POD_PORT, via="clusterip", ipv6=ipv6)
    assert_reached(probe, (pod.address("pod", ipv6), POD_PORT), client_ip(pod, ipv6))


def test_the_cluster_ip_is_the_client_nodes_and_covers_every_port(pod: Lab) -> None:
    listing = pod.exec(pod.client_node, ["nft", "list", "table", "inet", "lab_kube_proxy"]).stdout
    assert A.CLUSTER_IP in listing and A.CLUSTER_IP6 in listing
    for node in pod.wiring.nodes:
        if node != pod.client_node:
            assert pod.exec(node, ["nft", "list", "tables"]).stdout == ""
    # Any port maps to the same port on the pod (port = targetPort).
    assert pod.download(POD_DOWNLOAD, 100_000, via="clusterip").ok
    assert pod.upload(POD_UPLOAD, 100_000, via="clusterip", ipv6=True).ok


@FAMILIES
def test_the_node_probes_the_router_pod_from_its_lan_address(pod: Lab, ipv6: bool) -> None:
    reply = pod.node_get(HEALTH_PORT, "/healthz", ipv6=ipv6)
    assert reply.status == 200, reply
    seen = parse_report(reply.body.encode())
    assert seen.source == (A.NODE_IP6 if ipv6 else A.NODE_IP), reply


@FAMILIES
def test_every_node_reaches_the_router_pod_from_its_lan_address(pod: Lab, ipv6: bool) -> None:
    # In per-node, node B reaches node A's pods through node A's LAN address.
    for node in pod.wiring.nodes:
        source = NODE_LAN[node][ipv6]
        sock = pod.socket(node, family(ipv6))
        sock.bind((source, 0))
        probe = probe_tcp(sock, pod.address("pod", ipv6), POD_PORT, 3.0)
        assert_reached(probe, (pod.address("pod", ipv6), POD_PORT), source)


# -- nothing reaches the outside without the router -------------------------------------------


@FAMILIES
def test_no_pod_reaches_the_outside_without_the_router(pod: Lab, ipv6: bool) -> None:
    outside = A.EXTERNAL6[0] if ipv6 else A.EXTERNAL[0]
    # The outside is up and the nodes reach it...
    for node in pod.wiring.nodes:
        assert probe_tcp(pod.socket(node, family(ipv6)), outside, 80, 3.0).ok, node
    # ...but a pod's packets, forwarded un-NATed by its node, are never answered: the LAN's
    # gateway has no route back to the pod networks.
    assert pod.connect(80, address=outside, timeout=0.5).error == "timeout"
    assert probe_tcp(pod.socket("router", family(ipv6)), outside, 80, 0.5).error == "timeout"


@FAMILIES
def test_the_client_nodes_can_steer_outside_traffic_through_the_router_pod(pod: Lab, ipv6: bool) -> None:
    # What a test of "the router is no open gateway" needs on every wiring: the client's
    # packets for an outside address arrive at the router pod's eth0 (and, the pod not
    # forwarding, go no further).
    outside = A.EXTERNAL6[0] if ipv6 else A.EXTERNAL[0]
    ip_word = "ip6" if ipv6 else "ip"
    pod.nft("router", "table inet lab_count {\n  chain prerouting {\n"
            "    type filter hook prerouting priority -300; policy accept;\n"
            f"    iifname eth0 {ip_word} daddr {outside} counter\n  }}\n}}\n")  # fmt: skip
    try:
        with pod.routed_through_router(outside):
            assert pod.connect(80, address=outside, timeout=0.5).error == "timeout"
        listing = pod.exec("router", ["nft", "list", "table", "inet", "lab_count"]).stdout
        assert "counter packets 0 " not in listing and "counter packets" in listing, listing
        assert pod.connect(80, address=outside, timeout=0.5).error == "timeout"
    finally:
        pod.exec("router", ["nft", "delete", "table", "inet", "lab_count"])
    for node in pod.wiring.nodes:
        assert outside not in pod.exec(node, ["ip", "-6" if ipv6 else "-4", "route"]).stdout


# -- reverse-path filtering -------------------------------------------------------------------


def test_strict_reverse_path_filtering_is_on_in_the_router_pod(pod: Lab) -> None:
    lab = pod
    for scope in ("all", "default", "eth0", "macvlan0"):
        assert lab.sysctl("router", f"net/ipv4/conf/{scope}/rp_filter") == "1", scope


def test_strict_rp_filter_drops_the_probe_when_the_lan_route_is_on_macvlan0(pod: Lab) -> None:
    # A source address with its prefix route puts the node's LAN address behind macvlan0:
    # the kubelet's probe, arriving on eth0, fails the reverse-path check. Without the
    # prefix route (noprefixroute) it passes. This is the lab showing the bug, not the router.
    lab = pod
    lab.exec("router", ["ip", "link", "set", "macvlan0", "up"])
    lab.exec("router", ["ip", "address", "add", f"{A.SOURCE}/24", "dev", "macvlan0"])
    assert lab.node_get(HEALTH_PORT, timeout=0.5).error == "timeout"
    lab.exec("router", ["ip", "address", "flush", "dev", "macvlan0"])
    lab.exec("router", ["ip", "address", "add", f"{A.SOURCE}/24", "dev", "macvlan0", "noprefixroute"])
    assert lab.node_get(HEALTH_PORT, timeout=3).status == 200


def test_reverse_path_filtering_can_be_opted_out() -> None:
    with Lab(rp_filter=0) as lab:
        for scope in ("all", "default", "eth0", "macvlan0"):
            assert lab.sysctl("router", f"net/ipv4/conf/{scope}/rp_filter") == "0", scope


# -- reset ------------------------------------------------------------------------------------


def router_state(lab: Lab) -> dict[str, Any]:
    def j(*args: str) -> Any:
        return json.loads(lab.exec("router", ["ip", "-j", *args]).stdout or "[]")

    keys = ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding", "net/ipv4/conf/all/rp_filter",
            "net/ipv4/conf/macvlan0/rp_filter", "net/ipv4/conf/eth0/rp_filter"]  # fmt: skip
    links = {link["ifname"]: (link["mtu"], link["operstate"]) for link in j("link", "show")}
    return {
        "rules": [j("-4", "rule", "show"), j("-6", "rule", "show")],
        "routes": [j("-4", "route", "show", "table", "all"), j("-6", "route", "show", "table", "all")],
        "addresses": {a["ifname"]: [(x["local"], x["prefixlen"]) for x in a["addr_info"]]
                      for a in j("address", "show")},  # fmt: skip
        "links": links,
        "sysctls": {key: lab.sysctl("router", key) for key in keys},
        "nft": lab.exec("router", ["nft", "list", "ruleset"]).stdout,
    }


def test_reset_makes_the_router_namespace_a_new_pod_again(pod: Lab) -> None:
    lab = pod
    fresh = router_state(lab)
    mess = [
        ["ip", "link", "set", "macvlan0", "up"],
        ["ip", "address", "add", f"{A.SOURCE}/24", "dev", "macvlan0"],
        ["ip", "address", "add", f"{A.SOURCE6}/64", "dev", "macvlan0", "nodad"],
        ["ip", "route", "replace", "default", "via", A.GATEWAY, "dev", "macvlan0"],
        ["ip", "route", "add", "default", "via", A.GATEWAY, "dev", "macvlan0", "table", "2430"],
        ["ip", "-6", "route", "add", "default", "via", A.GATEWAY6, "dev", "macvlan0", "table", "2430"],
        ["ip", "rule", "add", "fwmark", "0x2430", "lookup", "2430", "priority", "100"],
        ["ip", "-6", "rule", "add", "fwmark", "0x2430", "lookup", "2430", "priority", "100"],
        ["ip", "route", "flush", "dev", "eth0", "proto", "boot"],  # the CNI's routes
        ["ip", "-6", "route", "flush", "dev", "eth0", "proto", "boot"],
        ["ip", "link", "set", "eth0", "mtu", "1300"],
        ["nft", "add", "table", "inet", "egress_router"],
    ]
    for argv in mess:
        lab.exec("router", argv)
    write_sysctls(lab.ns("router"), [("net/ipv4/ip_forward", "1"), ("net/ipv6/conf/all/forwarding", "1"),
                                     ("net/ipv4/conf/macvlan0/rp_filter", "2")])  # fmt: skip
    assert router_state(lab) != fresh
    lab.reset_router()
    assert router_state(lab) == fresh


# -- MTU, PMTU black hole and bulk transfers --------------------------------------------------


def test_bulk_transfers_move_every_byte(wired_lab: Lab) -> None:
    DOWNLOAD_PORT, UPLOAD_PORT = A.DOWNLOAD_PORT, A.UPLOAD_PORT
    # From the node, which reaches the outside without the router.
    size = 4 << 20
    got = wired_lab.download(DOWNLOAD_PORT, size, address="203.0.113.26", role="node")
    assert got.ok and got.moved == size and got.source == A.NODE_IP, got
    sent = wired_lab.upload(UPLOAD_PORT, size, address="203.0.113.26", role="node")
    assert sent.ok and sent.moved == size, sent


@pytest.fixture(scope="module", params=WIRINGS)
def mtu_lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    with Lab(wiring=request.param, ipv6=True, pod_mtu=1400, drop_icmp_too_big=True) as built:
        built.serve([(a, p, k) for a in (built.router_pod_ip, built.router_pod_ip6)
                     for p, k in ((POD_DOWNLOAD, "source"), (POD_UPLOAD, "sink"))],
                    role="router")  # fmt: skip
        yield built


def mtus(lab: Lab, role: str, dev: str) -> int:
    mtu: int = json.loads(lab.exec(role, ["ip", "-j", "link", "show", "dev", dev]).stdout)[0]["mtu"]
    return mtu


def test_the_router_pods_veth_pair_has_the_pod_mtu_and_the_clients_keeps_1500(mtu_lab: Lab) -> None:
    w = mtu_lab.wiring
    assert mtus(mtu_lab, "router", "eth0") == mtus(mtu_lab, w.router.node, w.router.veth) == 1400
    assert mtus(mtu_lab, "client", "eth0") == mtus(mtu_lab, w.client.node, w.client.veth) == 1500
    assert mtus(mtu_lab, "router", "macvlan0") == 1500
    mtu_lab.reset_router()
    assert mtus(mtu_lab, "router", "eth0") == 1400


@FAMILIES
def test_pods_with_different_mtus_still_move_bulk_data(mtu_lab: Lab, ipv6: bool) -> None:
    # Inside the cluster the node's "fragmentation needed" reaches the client (no gateway in
    # the way), and TCP's MSS covers the rest: large transfers work both ways.
    size = 2 << 20
    assert mtu_lab.path_mtu("client", mtu_lab.address("pod", ipv6)) == 1400
    assert mtu_lab.upload(POD_UPLOAD, size, ipv6=ipv6).ok
    assert mtu_lab.download(POD_DOWNLOAD, size, ipv6=ipv6).ok


@FAMILIES
def test_the_gateway_can_drop_what_path_mtu_discovery_needs(mtu_lab: Lab, ipv6: bool) -> None:
    # For a moment the gateway routes the pod networks toward node A, so that the outside can
    # send the router pod full-size packets, as the router's DNAT will make it do; node A's
    # "fragmentation needed" / "packet too big" then travels back through the gateway.
    lab = mtu_lab
    pods, node = ("2001:db8:3::/48", A.NODE_IP6) if ipv6 else ("198.51.100.0/24", A.NODE_IP)
    target = lab.address("pod", ipv6)
    lab.exec("gw", ["ip", "route", "add", pods, "via", node])
    try:
        lab.set_icmp_too_big_dropped(True)
        assert lab.path_mtu("ext", target) == 1500  # the black hole: the sender never learns
        lab.set_icmp_too_big_dropped(False)
        assert lab.path_mtu("ext", target) == 1400
    finally:
        lab.exec("gw", ["ip", "route", "del", pods, "via", node])
        lab.exec("ext", ["ip", "-6" if ipv6 else "-4", "route", "flush", "cache"])
        lab.set_icmp_too_big_dropped(True)
