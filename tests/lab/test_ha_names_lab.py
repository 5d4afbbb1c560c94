"""A destination name through the HA pair (lab/ha.py with lab/dns.py): dnsmasq on the client
pod, on the pod network, which both router pods reach; each router namespace's resolv.conf
names it (removed with the lab's namespaces).

Each replica resolves the name itself. What must hold: /readyz of both waits for the name, a
connection through either leaves from the reserved address to the name's address, the active
follows a changed record while HA holds (the standby relays to the active, so its connections
follow too), and after a crash the survivor's takeover keeps the name's answer and goes on
following it. The records' TTL is 1 s, EGRESS_ROUTER_DNS_MIN_TTL 2 s: a change is picked up
within about 2 s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from egress_router.lab import addresses as A
from egress_router.lab.dns import DnsServer
from egress_router.lab.ha import DESTINATION, HaLab, ha_env, wait_until

pytestmark = pytest.mark.lab

SETTLE = 10.0  # seconds for a start-up, a failover or a new answer to happen at all
NAMED_PORT = 8080
NAME = "named.example.test"
FIRST, SECOND = A.EXTERNAL[1], A.EXTERNAL[2]


def records(address: str) -> dict[str, list[str]]:
    return {NAME: [address]}


@pytest.fixture
def named() -> Iterator[tuple[HaLab, DnsServer]]:
    with HaLab() as lab:
        lab.serve([(FIRST, 80, "tcp"), (SECOND, 80, "tcp")])
        dns = DnsServer(lab, lab.pod_ip("c"), ttl=1, routers=("router_a", "router_b"))
        try:
            dns.start({})  # the name does not resolve yet (NXDOMAIN)
            yield lab, dns
        finally:
            dns.close()


def reaches(lab: HaLab, key: str, address: str) -> bool:
    probe = lab.connect(key, port=NAMED_PORT, timeout=1.0)
    return probe.ok and probe.source == A.SOURCE and probe.server == (address, 80)


def test_a_named_rule_through_the_pair_follows_its_name_and_survives_a_crash(named: tuple[HaLab, DnsServer]) -> None:
    lab, dns = named
    env = ha_env(EGRESS_DESTINATION=f"{DESTINATION}{NAMED_PORT} tcp {NAME} 80\n", EGRESS_ROUTER_DNS_MIN_TTL="2")
    lab.start_router("a", env)
    assert wait_until(lambda: lab.holders() == ["a"], SETTLE), lab.log("a")
    lab.start_router("b", env)
    assert wait_until(lambda: "HA: relaying to the active replica" in lab.log("b"), SETTLE), lab.log("b")
    # Neither is Ready while the name has no address, though the literal rule works already.
    assert not lab.is_ready("a") and not lab.is_ready("b")
    probe = lab.connect("b")
    assert probe.ok and probe.source == A.SOURCE, probe
    dns.set(records(FIRST))
    assert wait_until(lambda: lab.is_ready("a") and lab.is_ready("b"), SETTLE), lab.log("a") + lab.log("b")
    for key in ("a", "b"):
        assert reaches(lab, key, FIRST), (key, lab.connect(key, port=NAMED_PORT))
    # A changed record: new connections through the active go to the new address, and so do
    # those the standby relays to it; the address stays where it is.
    dns.set(records(SECOND))
    assert wait_until(lambda: reaches(lab, "a", SECOND), SETTLE), lab.log("a")
    assert reaches(lab, "b", SECOND)
    assert lab.holders() == ["a"] and lab.is_ready("a") and lab.is_ready("b")
    assert "ha role    active" in lab.status("a")
    # The active crashes: the survivor's takeover applies its plan with the name's answer.
    since = time.monotonic()
    lab.crash("a")
    assert lab.time_to_egress("b", since) is not None, lab.log("b")
    assert wait_until(lambda: reaches(lab, "b", SECOND), SETTLE), lab.log("b")
    assert lab.is_ready("b")
    # ...and, active now, it goes on following the name.
    dns.set(records(FIRST))
    assert wait_until(lambda: reaches(lab, "b", FIRST), SETTLE), lab.log("b")
    assert lab.holders() in (["b"], ["a", "b"])  # a crashed pod's kernel may keep it, gated
