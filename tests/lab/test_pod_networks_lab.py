"""The router on pod networks wired as real CNIs wire them (shared subnet as OpenShift SDN,
Calico's /32 pods behind a proxy-ARP node, per-node subnets with the client on another node),
each with strict reverse-path filtering in the router's namespace, checked at the destination.

What used to break: the router replaced the pod's default route with the LAN gateway, so its
replies to clients on other subnets, and to kubelet's probes from the node's LAN address
(inside EGRESS_SOURCE's prefix), left through macvlan0.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from egress_router.lab import SEED_EXPECTATIONS, Lab, seed_env
from egress_router.lab import addresses as A
from egress_router.lab.topology import stop_process

pytestmark = pytest.mark.lab

SOURCE = A.SOURCE
HEALTH_PORT = 9090


def init(lab: Lab, **overrides: str) -> subprocess.CompletedProcess[str]:
    done = lab.run_router(seed_env("init", **overrides))
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.parametrize("via", ["pod", "clusterip"])
@pytest.mark.parametrize(
    ("port", "protocol", "address", "remote_port"),
    [*SEED_EXPECTATIONS, (5001, "udp", "203.0.113.27", 5001)],
    ids=["port-proto-ip", "remote-port", "remote-port-2", "fallback-tcp", "fallback-udp"],
)
def test_the_seed_rules_redirect_from_the_reserved_source(
    wired_router_lab: Lab, via: str, port: int, protocol: str, address: str, remote_port: int
) -> None:
    lab = wired_router_lab
    init(lab)
    probe = lab.connect(port, protocol, via=via)
    assert probe.ok, f"{lab.wiring.name} {via} {port}/{protocol}: {probe.error}"
    assert (probe.server, probe.source) == ((address, remote_port), SOURCE)


def test_the_pods_own_routes_stay_and_nothing_routes_through_macvlan0_but_the_routers_table(
    wired_router_lab: Lab,
) -> None:
    lab = wired_router_lab
    main = lab.exec("router", ["ip", "route", "show"]).stdout
    init(lab)
    assert lab.exec("router", ["ip", "route", "show"]).stdout == main
    assert "macvlan0" not in main


@pytest.fixture
def legacy(wired_router_lab: Lab) -> Iterator[Lab]:
    router = wired_router_lab.start_router(seed_env("legacy"))
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if wired_router_lab.connect(HEALTH_PORT, timeout=0.5).ok or router.poll() is not None:
                break
            time.sleep(0.1)
        assert router.poll() is None, router.stderr.read() if router.stderr else ""
        yield wired_router_lab
    finally:
        stop_process(router)


def test_the_node_reaches_the_health_port_from_its_lan_address_and_everything_redirects(legacy: Lab) -> None:
    for path in ("/healthz", "/readyz"):
        reply = legacy.node_get(HEALTH_PORT, path)
        assert reply.ok and reply.status == 200, f"{legacy.wiring.name} {path}: {reply}"
    for port, protocol, address, remote_port in SEED_EXPECTATIONS:
        for via in ("pod", "clusterip"):
            probe = legacy.connect(port, protocol, via=via)
            assert (probe.server, probe.source) == ((address, remote_port), SOURCE), (via, probe)


def test_a_redirect_to_a_lan_address_goes_straight_out_on_the_lan(wired_router_lab: Lab) -> None:
    lab = wired_router_lab
    # The LAN's gateway itself is the LAN host served here: port 7 on 192.0.2.1.
    server = lab.serve([(A.GATEWAY, 7007, "tcp")], role="gw")
    try:
        init(lab, EGRESS_DESTINATION=f"7007 tcp {A.GATEWAY}\n")
        probe = lab.connect(7007)
        assert (probe.server, probe.source) == ((A.GATEWAY, 7007), SOURCE), probe
    finally:
        stop_process(server)


def test_a_new_gateway_that_does_not_answer_is_named_when_the_pod_is_set_up_again(
    wired_router_lab: Lab,
) -> None:
    lab = wired_router_lab
    init(lab)
    # The init container runs again in the same pod, with a typo in EGRESS_GATEWAY: the
    # address and the table are there already, but the new gateway is asked for all that.
    again = lab.run_router(seed_env("init", EGRESS_GATEWAY="192.0.2.254"))
    assert again.returncode == 0, again.stderr
    assert "the gateway 192.0.2.254 did not answer ARP on macvlan0" in again.stderr
    # Back to the right one: it answers, nothing is said.
    fixed = init(lab)
    assert "did not answer" not in fixed.stderr
    assert lab.connect(8080).source == SOURCE


def test_a_legacy_router_restarted_with_another_gateway_names_it(wired_router_lab: Lab) -> None:
    lab = wired_router_lab
    init(lab)
    router = lab.start_router(seed_env("legacy", EGRESS_GATEWAY="192.0.2.254"))
    try:
        time.sleep(1.5)
        router.send_signal(signal.SIGTERM)
        _, stderr = router.communicate(timeout=10)
    finally:
        stop_process(router)
    assert "the gateway 192.0.2.254 did not answer ARP on macvlan0" in stderr
