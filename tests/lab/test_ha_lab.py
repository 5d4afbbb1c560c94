"""HA in the lab (lab/ha.py): two router pods on two nodes, one reserved address, checked at
the destination (the outside server saw the reserved address as the source).

Every test gets a fresh pair: router a started first (it wins the election), then b; the
failover times themselves are measured by `benchmarks/failover.py` over many trials, not
asserted here: each wait below is a bound on "it happens", far above the figures.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from egress_router.lab import addresses as A
from egress_router.lab.ha import HaLab, ha_env, wait_until
from egress_router.lab.probe import Probe

pytestmark = pytest.mark.lab

SETTLE = 10.0  # seconds for a start-up or a failover to happen at all
EGRESS_LIMIT = 10.0


def start_pair(lab: HaLab, env: dict[str, str] | None = None) -> None:
    lab.serve()
    lab.start_router("a", env)
    assert wait_until(lambda: lab.holders() == ["a"] and lab.is_ready("a"), SETTLE), lab.log("a")
    lab.start_router("b", env)
    assert wait_until(lambda: lab.is_ready("b"), SETTLE), lab.log("b")


@pytest.fixture
def pair() -> Iterator[HaLab]:
    with HaLab() as lab:
        start_pair(lab)
        yield lab


def reaches_from_reserved(lab: HaLab, key: str) -> bool:
    probe = lab.connect(key)
    return probe.ok and probe.source == A.SOURCE


def failover_to_b(lab: HaLab, since: float) -> None:
    took = lab.time_to_egress("b", since, limit=EGRESS_LIMIT)
    assert took is not None, f"no egress through b from {A.SOURCE}:\n{lab.log('b')}"
    assert lab.holders() in (["b"], ["a", "b"])  # a crashed pod's kernel may keep it, gated
    assert wait_until(lambda: lab.gateway_neighbour() == lab.mac("b"), SETTLE)


def test_exactly_one_replica_holds_the_address_steadily(pair: HaLab) -> None:
    seen = set()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        seen.add(tuple(pair.holders()))
        time.sleep(0.05)
    assert seen == {("a",)}
    assert pair.arp_answers() == {pair.mac("a")}
    assert pair.gateway_neighbour() in (None, pair.mac("a"))
    assert "ha role    active" in pair.status("a")
    assert "ha role    standby" in pair.status("b")
    # Someone deletes the active's HA tables: they are put back, and one replica holds the
    # address again (the adverts may have gone astray meanwhile, and the standby taken over).
    subprocess.run(["ip", "netns", "exec", pair.ns("router_a"), "nft", "delete", "table", "inet", "egress_router_ha"],
                   check=True)
    assert wait_until(lambda: "ha role    none" not in pair.status("a"), SETTLE), pair.log("a")

    def one_answers() -> bool:
        held = pair.holders()
        return len(held) == 1 and pair.arp_answers() == {pair.mac(held[0])}

    assert wait_until(one_answers, SETTLE), pair.log("a")


def test_both_replicas_are_ready_and_either_leaves_from_the_reserved_address(pair: HaLab) -> None:
    assert pair.is_ready("a") and pair.is_ready("b")
    for key in ("a", "b", "b", "a"):
        probe = pair.connect(key)
        assert probe.ok and probe.source == A.SOURCE, (key, probe)
    metrics = pair.metrics("b")
    assert 'egress_router_ha_role{role="standby"} 1.0' in metrics
    relayed = [line for line in metrics.splitlines() if line.startswith("egress_router_ha_relayed_connections_total")]
    assert relayed and float(relayed[0].split()[-1]) >= 2
    assert 'egress_router_ha_role{role="active"} 1.0' in pair.metrics("a")


def test_a_crash_of_the_active_moves_the_address_and_the_dead_pod_goes_quiet(pair: HaLab) -> None:
    mac_a = pair.mac("a")
    since = time.monotonic()
    pair.crash("a")
    failover_to_b(pair, since)
    # Nothing is alive in a's pod, yet its kernel stops answering for the address.
    assert wait_until(lambda: mac_a not in pair.arp_answers(0.2), SETTLE)
    assert pair.arp_answers() == {pair.mac("b")}
    assert 'egress_router_ha_transitions_total{to="active"} 1.0' in pair.metrics("b")


def test_keepalived_never_outlives_the_router(pair: HaLab) -> None:
    assert "keepalived" in pair.processes("a")
    since = time.monotonic()
    pair.crash("a", only_router=True)  # the router alone: its keepalived gets the parent-death signal
    assert wait_until(lambda: "keepalived" not in pair.processes("a"), SETTLE), pair.processes("a")
    failover_to_b(pair, since)


def test_keepalived_dying_is_a_fault_and_it_comes_back_as_standby(pair: HaLab) -> None:
    pid = pair.keepalived_pid("a")
    assert pid is not None
    since = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    failover_to_b(pair, since)
    assert wait_until(lambda: pair.keepalived_pid("a") not in (None, pid) and pair.is_ready("a"), SETTLE), pair.log("a")
    assert pair.holders() == ["b"]
    assert reaches_from_reserved(pair, "a")


def test_node_death_moves_the_address(pair: HaLab) -> None:
    since = time.monotonic()
    pair.node_death("a")
    failover_to_b(pair, since)
    assert pair.arp_answers() == {pair.mac("b")}


def test_the_active_losing_its_lan_link_moves_the_address(pair: HaLab) -> None:
    since = time.monotonic()
    pair.set_lan_link("a", False)
    failover_to_b(pair, since)
    assert wait_until(lambda: not pair.holds("a"), SETTLE)
    # Back on the LAN, a stays the standby and relays again over the pod network.
    pair.set_lan_link("a", True)
    assert wait_until(lambda: pair.is_ready("a"), SETTLE), pair.log("a")
    assert pair.holders() == ["b"]
    assert reaches_from_reserved(pair, "a")


def test_sigterm_hands_the_address_over(pair: HaLab) -> None:
    since = time.monotonic()
    stopping = threading.Thread(target=pair.terminate, args=("a",))
    stopping.start()
    failover_to_b(pair, since)
    # Until it exits, a relays what still reaches it (the Service is slow to drop it).
    relayed = [pair.connect("a", timeout=0.5) for _ in range(3)] if stopping.is_alive() else []
    stopping.join()
    assert not relayed or any(p.ok and p.source == A.SOURCE for p in relayed), relayed
    assert pair.routers["a"].returncode == 0, pair.log("a")
    assert "HA: handed over" in pair.log("a")
    assert pair.holders() == ["b"]  # a removed its address on the way out
    assert pair.processes("a") == []


def test_a_restarted_replica_stays_standby_and_the_lan_does_not_flap(pair: HaLab) -> None:
    since = time.monotonic()
    pair.crash("a")
    failover_to_b(pair, since)
    mac_b = pair.mac("b")
    pair.start_router("a")  # the container restarts in the same pod
    assert wait_until(lambda: pair.is_ready("a"), SETTLE), pair.log("a")
    neighbours = set()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        neighbours.add(pair.gateway_neighbour())
        assert pair.holders() == ["b"]  # the stale address was removed, and not taken back
        time.sleep(0.1)
    assert neighbours == {mac_b}
    assert reaches_from_reserved(pair, "a") and reaches_from_reserved(pair, "b")
    assert "ha role    standby" in pair.status("a")


def test_unicast_peers_over_the_pod_network() -> None:
    # Where the LAN carries no multicast: the adverts go between the pods' own addresses, and
    # the active that loses its LAN link (its macvlan0's carrier) lets go all the same.
    with HaLab() as lab:
        start_pair(lab, ha_env(EGRESS_ROUTER_VRRP_PEERS=f"{lab.pod_ip('a')},{lab.pod_ip('b')}"))
        assert lab.holders() == ["a"]
        assert reaches_from_reserved(lab, "b") and reaches_from_reserved(lab, "a")
        since = time.monotonic()
        lab.set_lan_link("a", False)
        failover_to_b(lab, since)
        assert wait_until(lambda: not lab.holds("a"), SETTLE)


def reaches_from_reserved6(lab: HaLab, key: str) -> bool:
    probe = lab.connect(key, ipv6=True)
    return probe.ok and probe.source == A.SOURCE6 and probe.server == (A.EXTERNAL6[0], 80)


def test_dual_stack_sources_move_together() -> None:
    # The pod network is dual-stack too: IPv6 clients reach the routers' IPv6 pod addresses.
    with HaLab(ipv6=True) as lab:
        start_pair(lab, ha_env(ipv6=True))
        assert lab.holds6("a") and not lab.holds6("b")
        # Both replicas serve both families: the standby relays IPv6 to the active's IPv6 pod
        # address, which it asked the active for (the adverts name only its IPv4 one).
        for key in ("a", "b", "b", "a"):
            assert reaches_from_reserved6(lab, key), (key, lab.connect(key, ipv6=True))
            assert reaches_from_reserved(lab, key), key
        assert f"ipv6={lab.pod_ip6('a')}" in lab.log("b")
        assert lab.nd_answers() == {lab.mac("a")}
        mac_a = lab.mac("a")
        lab.gateway_sends6()
        assert wait_until(lambda: lab.gateway_neighbour6() == mac_a, SETTLE)
        since = time.monotonic()
        lab.crash("a")
        failover_to_b(lab, since)
        assert wait_until(lambda: lab.holds6("b"), SETTLE)
        # The survivor redirects new IPv6 connections from the reserved IPv6 source.
        assert wait_until(lambda: reaches_from_reserved6(lab, "b"), SETTLE), lab.log("b")
        # b told the LAN (an unsolicited NA), and a's pod, with nothing alive in it, goes quiet.
        assert wait_until(lambda: lab.gateway_neighbour6() == lab.mac("b"), SETTLE)
        assert wait_until(lambda: mac_a not in lab.nd_answers(0.2), SETTLE)
        assert lab.nd_answers() == {lab.mac("b")}


def test_a_dual_stack_standby_serves_ipv6_once_it_knows_the_actives_ipv6_address() -> None:
    # The standby cannot ask the active for its IPv6 pod address (a policy blocks the health
    # port between them): it relays IPv4 but is not Ready, and an IPv6 connection that reaches
    # it is dropped before conntrack keeps it. Unblocked, the standby learns the address, and
    # the same connection's retransmitted SYN is relayed: it leaves from the IPv6 source.
    with HaLab(ipv6=True) as lab:
        lab.serve()
        lab.start_router("a", ha_env(ipv6=True))
        assert wait_until(lambda: lab.holders() == ["a"] and lab.is_ready("a"), SETTLE), lab.log("a")
        block = ("table inet lab_block {\n chain output {\n  type filter hook output priority 0; policy accept;\n"
                 f"  ip daddr {lab.pod_ip('a')} tcp dport 9090 drop\n }}\n}}\n")
        lab.exec("router_b", ["nft", "-f", "-"], input=block)
        lab.start_router("b", ha_env(ipv6=True))
        assert wait_until(lambda: "HA: relaying to the active replica" in lab.log("b"), SETTLE), lab.log("b")
        assert reaches_from_reserved(lab, "b")
        assert not lab.is_ready("b")
        result: list[Probe] = []
        waiting = threading.Thread(target=lambda: result.append(lab.connect("b", timeout=8.0, ipv6=True)))
        waiting.start()
        time.sleep(0.3)  # its first SYN is dropped meanwhile
        lab.exec("router_b", ["nft", "delete", "table", "inet", "lab_block"])
        waiting.join()
        assert result[0].ok and result[0].source == A.SOURCE6, (result, lab.log("b"))
        assert wait_until(lambda: lab.is_ready("b"), SETTLE), lab.log("b")
