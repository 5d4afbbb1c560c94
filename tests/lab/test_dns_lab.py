"""Destinations by DNS name on the real kernel, with a real DNS server (dnsmasq, in the client
pod's namespace on the pod network; the router pod's resolv.conf names it, with a cluster's
search list and ndots:5, which the router must not apply).

One wiring (shared) only: what names add is resolution and the per-name chains; how a
redirected connection is routed is the same as for a literal address, and the pod-network
tests cover it on every wiring. The router's own lookups must leave through eth0 (its main
table): the DNS server is on the pod network, which the egress side cannot reach, so every
answer the router gets proves it; the server's log also names the pod address as the asker.

The legacy tests set EGRESS_ROUTER_DNS_MIN_TTL to 2 s (the default floor is 5 s) and the
records' TTL is 1 s, below that floor: the floor decides, and the module stays fast.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from egress_router.lab import Lab, seed_env
from egress_router.lab import addresses as A
from egress_router.lab.dns import DnsServer
from egress_router.lab.probe import MAX_LINE, parse_report

pytestmark = pytest.mark.lab

ROUTER = A.ROUTER_IP
SERVERS = [
    ("203.0.113.25", 80, "tcp"),
    ("203.0.113.25", 7000, "tcp"),
    ("203.0.113.26", 80, "tcp"),
    ("203.0.113.26", 443, "tcp"),
    ("203.0.113.27", 5000, "tcp"),
    ("203.0.113.26", 5000, "udp"),
]
FLOOR = 2.0  # EGRESS_ROUTER_DNS_MIN_TTL in the legacy tests
RECORDS = {
    "api.example.test": ["203.0.113.26"],
    "mirror.example.test": ["203.0.113.27"],
    "move.example.test": ["203.0.113.25"],
    "pair.example.test": ["203.0.113.25", "203.0.113.26"],
    "loop.example.test": ["127.0.0.1", "203.0.113.25"],
    "onlyloop.example.test": ["127.0.0.1"],
}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(wiring="shared") as built:
        built.serve(SERVERS)
        yield built


@pytest.fixture(scope="module")
def dns(lab: Lab) -> Iterator[DnsServer]:
    server = DnsServer(lab, lab.client_ip, ttl=1).start(RECORDS)
    yield server
    server.close()


@pytest.fixture
def fresh(lab: Lab, dns: DnsServer) -> Lab:
    lab.reset_router()
    dns.set(RECORDS)
    return lab


def env(mode: str, destination: str, **more: str) -> dict[str, str]:
    return seed_env(mode, EGRESS_DESTINATION=destination, **more)


def wait_for(check: Callable[[], Any], timeout: float, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def test_named_rules_both_forms_and_a_named_fallback_redirect_from_the_reserved_source(fresh: Lab, dns: DnsServer) -> None:
    asked_before = len(dns.queries())
    done = fresh.run_router(env("init", "80 tcp api.example.test\n8443 tcp api.example.test 443\nmirror.example.test\n"))
    assert done.returncode == 0, done.stderr
    for port, server in ((80, ("203.0.113.26", 80)), (8443, ("203.0.113.26", 443)), (5000, ("203.0.113.27", 5000))):
        probe = fresh.connect(port)
        assert probe.server == server and probe.source == A.SOURCE, (port, probe)
    # `plan` shows the names and what they resolve to now, through the pod's resolver.
    shown = fresh.exec("router", [sys.executable, "-m", "egress_router", "plan"], env=fresh.router_env(
        env("init", "80 tcp api.example.test\nmirror.example.test\n"))).stdout
    assert "redirect 80/tcp -> api.example.test port 80" in shown
    assert "name api.example.test resolves now to 203.0.113.26 (TTL 1 s)" in shown, shown
    assert "numgen inc mod 1 map { 0 : 203.0.113.27 }" in shown
    # A restart (the init container again) finds its structure: the table is not rewritten,
    # only the names' chains are (the batch of element changes is empty).
    again = fresh.run_router(env("init", "80 tcp api.example.test\n8443 tcp api.example.test 443\nmirror.example.test\n",
                                 EGRESS_ROUTER_DEBUG="1"))
    assert again.returncode == 0 and "full=False" in again.stderr and "delete table" not in again.stderr, again.stderr
    assert fresh.connect(8443).server == ("203.0.113.26", 443)
    asked = dns.queries()[asked_before:]
    # Absolute names only: no search domain tried, A alone (the source is IPv4), and the
    # router asked from its pod address, through eth0.
    assert asked and all(f"from {ROUTER}" in line for line in asked), asked
    assert not [line for line in asked if "cluster.local" in line or "AAAA" in line], asked


def test_a_name_that_does_not_resolve_fails_init_and_the_running_rules_stay(fresh: Lab) -> None:
    assert fresh.run_router(seed_env("init")).returncode == 0
    before = fresh.nft_table()
    done = fresh.run_router(env("init", "80 tcp nothere.example.test\n7000 tcp 203.0.113.25\n"))
    assert done.returncode == 1
    assert "nothere.example.test" in done.stderr and "NXDOMAIN" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert fresh.nft_table() == before
    probe = fresh.connect(80)  # the seed's rule, still in force
    assert probe.server == ("203.0.113.25", 80) and probe.source == A.SOURCE


def test_an_answer_pointing_at_loopback_is_refused_and_never_used(fresh: Lab) -> None:
    done = fresh.run_router(env("init", "80 tcp onlyloop.example.test\n"))
    assert done.returncode == 1 and "onlyloop.example.test" in done.stderr and "loopback" in done.stderr, done.stderr
    done = fresh.run_router(env("init", "80 tcp loop.example.test\n"))
    assert done.returncode == 0, done.stderr
    assert "127.0.0.1" in done.stderr and "loopback" in done.stderr  # the warning
    table = fresh.nft_table()
    assert table is not None and "127.0.0.1" not in table
    for _ in range(4):
        probe = fresh.connect(80)
        assert probe.server == ("203.0.113.25", 80) and probe.source == A.SOURCE


class Router:
    """A legacy router run in the router namespace, with its log in a file."""

    def __init__(self, lab: Lab, log: Path, destination: str, **more: str) -> None:
        """`destination`: the rules' text; or, with `EGRESS_DESTINATION_FILE` in `more`, unused."""
        self.lab, self.log = lab, log
        # Drift checked every half second: a name's new chain must never look like drift.
        environment = env("legacy", destination, EGRESS_ROUTER_DNS_MIN_TTL=str(FLOOR), EGRESS_ROUTER_CHECK_EVERY="0.5", **more)
        if "EGRESS_DESTINATION_FILE" in more:
            del environment["EGRESS_DESTINATION"]
        with open(log, "w") as out:
            self.process = lab.start_router(environment, stdout=out, stderr=subprocess.STDOUT)

    def http(self, path: str) -> tuple[int, str]:
        reply = self.lab.client_get(9090, path)
        if reply.status is None:
            raise OSError(reply.error)
        return reply.status, reply.body

    def ready(self) -> bool:
        return self.readyz() == 200

    def readyz(self) -> int | None:
        try:
            return self.http("/readyz")[0]
        except OSError:
            return None

    def metric(self, series: str) -> float | None:
        try:
            _, body = self.http("/metrics")
        except OSError:
            return None
        for line in body.splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(5)


@pytest.fixture
def legacy(fresh: Lab, tmp_path: Path) -> Iterator[Callable[[str], Router]]:
    started: list[Router] = []

    def start(destination: str, **more: str) -> Router:
        router = Router(fresh, tmp_path / f"router{len(started)}.log", destination, **more)
        started.append(router)
        return router

    yield start
    for router in started:
        router.stop()


def test_legacy_follows_a_changed_record_within_the_floor_and_keeps_open_connections(
    legacy: Callable[[str], Router], dns: DnsServer
) -> None:
    router = legacy("80 tcp move.example.test\n7000 tcp 203.0.113.25\n")
    assert wait_for(router.ready, 10), router.log.read_text()
    lab = router.lab
    stream = lab.open_stream(80)
    assert stream.report.server == ("203.0.113.25", 80) and stream.source == A.SOURCE
    assert stream.exchange(b"before\n") == b"before\n"

    dns.set({**RECORDS, "move.example.test": ["203.0.113.26"]})
    changed = time.monotonic()
    assert wait_for(lambda: lab.connect(80, timeout=1).server == ("203.0.113.26", 80), FLOOR + 1.0), router.log.read_text()
    print(f"\nnew connections moved {time.monotonic() - changed:.2f} s after the record changed (TTL 1 s, floor {FLOOR:g} s)")
    probe = lab.connect(80)
    assert probe.server == ("203.0.113.26", 80) and probe.source == A.SOURCE
    for i in range(3):  # the open connection keeps its NAT binding to the old address
        assert stream.exchange(f"after {i}\n".encode()) == f"after {i}\n".encode()
    assert stream.report.server == ("203.0.113.25", 80)
    stream.close()
    assert lab.connect(7000).server == ("203.0.113.25", 7000)  # the literal rule never moved
    time.sleep(1.0)  # two drift checks after the change
    assert router.metric("egress_router_drift_repairs_total") == 0, router.log.read_text()
    log = router.log.read_text()
    assert "new addresses of a destination name applied" in log and "full_table=False" in log.split("new addresses")[-1]


def test_legacy_spreads_new_connections_over_both_addresses_of_a_name(legacy: Callable[[str], Router]) -> None:
    router = legacy("80 tcp pair.example.test\n")
    assert wait_for(router.ready, 10), router.log.read_text()
    seen = [router.lab.connect(80) for _ in range(6)]
    assert {p.server for p in seen} == {("203.0.113.25", 80), ("203.0.113.26", 80)}, seen
    assert all(p.source == A.SOURCE for p in seen)


def test_a_resolver_that_stops_answering_keeps_the_last_answer_and_is_counted(legacy: Callable[[str], Router], dns: DnsServer) -> None:
    router = legacy("80 tcp api.example.test\n")
    assert wait_for(router.ready, 10), router.log.read_text()
    failures = 'egress_router_dns_failures_total{name="api.example.test"}'
    assert router.metric(failures) == 0
    dns.pause()
    try:
        assert wait_for(lambda: (router.metric(failures) or 0) >= 1, FLOOR + 6, 0.2), router.log.read_text()
        probe = router.lab.connect(80)
        assert probe.server == ("203.0.113.26", 80) and probe.source == A.SOURCE
        assert router.ready()  # resolved once: the last answer serves
    finally:
        dns.resume()
    assert "keeping its last addresses" in router.log.read_text()


def test_legacy_starts_without_a_name_that_does_not_resolve_yet_and_is_ready_once_it_does(
    legacy: Callable[[str], Router], dns: DnsServer
) -> None:
    router = legacy("80 tcp later.example.test\n7000 tcp 203.0.113.25\n")
    lab = router.lab
    assert wait_for(lambda: lab.connect(7000, timeout=0.5).server == ("203.0.113.25", 7000), 10), router.log.read_text()
    assert wait_for(router.readyz, 5) == 503
    assert not lab.connect(80, timeout=1).ok  # refused: never another rule's or the fallback's
    dns.set({**RECORDS, "later.example.test": ["203.0.113.26"]})
    # Retried with backoff: the first retry is 5 s after the first failure.
    assert wait_for(router.ready, 12, 0.2), router.log.read_text()
    assert lab.connect(80).server == ("203.0.113.26", 80)


def test_a_udp_flow_refused_while_its_name_had_no_address_is_redirected_once_it_has_one(
    legacy: Callable[[str], Router], dns: DnsServer
) -> None:
    """One UDP socket keeps sending to a named port from before the name resolves: once it has,
    the same flow (the same addresses and ports) is redirected, not left as it was met."""
    router = legacy("5353 udp later.example.test 5000\n7000 tcp 203.0.113.25\n")
    lab = router.lab
    assert wait_for(lambda: lab.connect(7000, timeout=0.5).ok, 10), router.log.read_text()
    flow = lab.socket("client", kind=socket.SOCK_DGRAM)
    try:
        flow.settimeout(0.5)
        flow.connect((ROUTER, 5353))
        for _ in range(3):  # refused, or nothing: never a report from a server
            flow.send(b"probe\n")
            with pytest.raises(OSError):
                flow.recv(MAX_LINE)
        dns.set({**RECORDS, "later.example.test": ["203.0.113.26"]})
        assert wait_for(router.ready, 12, 0.2), router.log.read_text()

        def redirected() -> bool:
            flow.send(b"probe\n")
            try:
                probe = parse_report(flow.recv(MAX_LINE))
            except OSError:
                return False
            return probe.server == ("203.0.113.26", 5000) and probe.source == A.SOURCE

        assert wait_for(redirected, 3, 0.2)  # at once: not after the flow's conntrack entry expired
    finally:
        flow.close()


def test_a_name_whose_answer_shrinks_to_nothing_usable_keeps_its_last_answer_until_it_has_one_again(
    legacy: Callable[..., Router], dns: DnsServer
) -> None:
    """An answer with only refused addresses (here loopback) is a failed lookup, as NXDOMAIN
    is: the last good addresses stay in use, counted as failures, and the name follows its
    record again as soon as it has a usable address."""
    router = legacy("80 tcp api.example.test\n7000 tcp move.example.test\n")
    assert wait_for(router.ready, 10), router.log.read_text()
    lab = router.lab
    failures = 'egress_router_dns_failures_total{{name="{}"}}'
    shrunk = {k: v for k, v in RECORDS.items() if k != "move.example.test"}  # move: NXDOMAIN
    dns.set({**shrunk, "api.example.test": ["127.0.0.1"]})

    def both_failed() -> bool:
        return all((router.metric(failures.format(n)) or 0) >= 1 for n in ("api.example.test", "move.example.test"))

    assert wait_for(both_failed, FLOOR + 2, 0.2), router.log.read_text()
    for port, server in ((80, ("203.0.113.26", 80)), (7000, ("203.0.113.25", 7000))):
        probe = lab.connect(port)  # the last good answer, from the reserved source
        assert probe.server == server and probe.source == A.SOURCE, (port, probe)
    assert router.ready()  # resolved once: still ready
    assert router.metric('egress_router_dns_addresses{name="api.example.test"}') == 1
    table = lab.nft_table()
    assert table is not None and "127.0.0.1" not in table
    log = router.log.read_text()
    assert "keeping its last addresses" in log and "loopback" in log and "NXDOMAIN" in log, log
    # A usable address again: the retry (5 s after the failure) applies it.
    dns.set({**RECORDS, "api.example.test": ["127.0.0.1", "203.0.113.25"]})
    assert wait_for(lambda: lab.connect(80, timeout=1).server == ("203.0.113.25", 80), 8, 0.2), router.log.read_text()
    assert lab.connect(80).source == A.SOURCE


def test_a_reload_resolves_an_added_name_drops_a_removed_ones_chain_and_the_other_rules_keep_working(
    legacy: Callable[..., Router], tmp_path: Path
) -> None:
    rules = tmp_path / "destinations"
    rules.write_text("80 tcp api.example.test\n7000 tcp 203.0.113.25\n5000 tcp mirror.example.test\n")
    router = legacy("", EGRESS_DESTINATION_FILE=str(rules))
    assert wait_for(router.ready, 10), router.log.read_text()
    lab = router.lab
    assert lab.connect(80).server == ("203.0.113.26", 80)
    table = lab.nft_table()
    assert table is not None and "dns4_tcp_80_api.example.test" in table

    new = tmp_path / "destinations.new"
    new.write_text("8080 tcp move.example.test 80\n7000 tcp 203.0.113.25\n5000 tcp mirror.example.test\n")
    new.replace(rules)  # atomic, as a ConfigMap update is
    literal: list[Any] = []

    def moved() -> bool:
        # Throughout the reload, the literal rule and the kept name answer every connection.
        literal.append(lab.connect(7000, timeout=1))
        literal.append(lab.connect(5000, timeout=1))
        return lab.connect(8080, timeout=1).server == ("203.0.113.25", 80)

    assert wait_for(moved, 5, 0.1), router.log.read_text()
    assert all(p.source == A.SOURCE for p in literal) and {p.server for p in literal} == {
        ("203.0.113.25", 7000), ("203.0.113.27", 5000)}, literal
    probe = lab.connect(8080)
    assert probe.server == ("203.0.113.25", 80) and probe.source == A.SOURCE
    assert wait_for(router.ready, 3), router.log.read_text()
    table = lab.nft_table()
    assert table is not None and "api.example.test" not in table, table  # its chain, its vmap element
    assert "dns4_tcp_80_move.example.test" in table
    assert not lab.connect(80, timeout=1).ok  # the removed rule's port is refused
    log = router.log.read_text()
    assert "reload applied" in log and "reload failed" not in log, log


def test_a_reload_that_drops_a_name_while_it_is_looked_up_still_follows_the_new_names(
    legacy: Callable[..., Router], dns: DnsServer, tmp_path: Path
) -> None:
    """The nameserver is stopped, so the removed name's lookup waits (up to 3 s) while the
    reload lands: that lookup's end must not stop the following of the other names."""
    rules = tmp_path / "destinations"
    rules.write_text("80 tcp api.example.test\n7000 tcp 203.0.113.25\n")
    router = legacy("", EGRESS_DESTINATION_FILE=str(rules))
    assert wait_for(router.ready, 10), router.log.read_text()
    lab = router.lab

    def looking_up() -> bool:  # the router's resolver has a UDP socket open: a query waits
        return bool(lab.exec("router", ["ss", "-Huan"], check=False).stdout.strip())

    dns.pause()
    try:
        assert wait_for(looking_up, FLOOR + 1, 0.02), router.log.read_text()
        new = tmp_path / "destinations.new"
        new.write_text("8080 tcp move.example.test 80\n7000 tcp 203.0.113.25\n")
        new.replace(rules)
        assert wait_for(lambda: "reload applied" in router.log.read_text(), 2), router.log.read_text()
        assert looking_up()  # the dropped name's lookup outlived the reload
    finally:
        dns.resume()
    assert wait_for(lambda: lab.connect(8080, timeout=1).server == ("203.0.113.25", 80), 6, 0.2), router.log.read_text()
    assert lab.connect(8080).source == A.SOURCE and lab.connect(7000).server == ("203.0.113.25", 7000)
    assert wait_for(router.ready, 2) and "Traceback" not in router.log.read_text()


def test_metrics_and_status_name_the_name(legacy: Callable[[str], Router]) -> None:
    router = legacy("80 tcp pair.example.test\n8443 tcp api.example.test 443\nmirror.example.test\n")
    assert wait_for(router.ready, 10), router.log.read_text()
    lab = router.lab
    assert lab.connect(8443).server == ("203.0.113.26", 443)
    assert router.metric('egress_router_dns_addresses{name="pair.example.test"}') == 2
    assert (router.metric('egress_router_dns_last_success_timestamp_seconds{name="api.example.test"}') or 0) > 0
    series = 'egress_router_connections_total{destination="api.example.test:443",port="8443",protocol="tcp"}'
    assert router.metric(series) == 1
    done = lab.exec("router", [sys.executable, "-m", "egress_router", "status"], env=lab.router_env({}))
    assert "pair.example.test ipv4: 203.0.113.25, 203.0.113.26" in done.stdout, done.stdout
    assert "mirror.example.test" in done.stdout and "api.example.test:443" in done.stdout
    state = json.loads(lab.exec("router", [sys.executable, "-m", "egress_router", "status", "--json"], env=lab.router_env({})).stdout)
    names = {n["name"]: n for n in state["names"]}
    assert names["api.example.test"]["addresses"] == ["203.0.113.26"] and names["api.example.test"]["since"] > 0


@pytest.fixture(scope="module")
def lab6() -> Iterator[Lab]:
    with Lab(ipv6=True, wiring="shared") as built:
        built.serve([("203.0.113.25", 80, "tcp"), ("2001:db8:2::25", 80, "tcp"), ("2001:db8:2::26", 80, "tcp"),
                     ("2001:db8:2::27", 5000, "tcp")])
        yield built


def test_a_dual_stack_source_resolves_a_and_aaaa_and_each_family_goes_to_its_own(lab6: Lab) -> None:
    lab6.exec("gw", ["ip", "neigh", "replace", A.SOURCE6, "lladdr", "02:00:00:00:00:01", "dev", "lan0", "nud", "stale"])
    server = DnsServer(lab6, lab6.client_ip, ttl=1).start(
        {"dual.example.test": ["203.0.113.25", "2001:db8:2::25"], "six.example.test": ["2001:db8:2::27"]}
    )
    try:
        done = lab6.run_router(seed_env(
            "init", EGRESS_SOURCE=f"{A.SOURCE}/24,{A.SOURCE6}/64", EGRESS_GATEWAY=f"{A.GATEWAY},{A.GATEWAY6}",
            EGRESS_DESTINATION="80 tcp dual.example.test\nsix.example.test\n",
        ))
        assert done.returncode == 0, done.stderr
        v4, v6 = lab6.connect(80), lab6.connect(80, address=lab6.router_pod_ip6)
        assert (v4.server, v4.source) == (("203.0.113.25", 80), A.SOURCE), v4
        assert (v6.server, v6.source) == (("2001:db8:2::25", 80), A.SOURCE6), v6
        fallback = lab6.connect(5000, address=lab6.router_pod_ip6)
        assert (fallback.server, fallback.source) == (("2001:db8:2::27", 5000), A.SOURCE6), fallback
        asked = " ".join(server.queries())
        assert "query[A] dual.example.test" in asked and "query[AAAA] dual.example.test" in asked
    finally:
        server.close()


def rule_of(table: str | None, chain: str) -> str:
    """The one rule of `chain` in an `nft list table` text."""
    assert table is not None
    lines = table.split(f"chain {chain} {{", 1)[1].splitlines()
    return next(line.strip() for line in lines if line.strip())


def test_legacy_dual_stack_follows_a_changed_aaaa_record_and_leaves_the_ipv4_side_alone(lab6: Lab, tmp_path: Path) -> None:
    lab6.reset_router()
    lab6.exec("gw", ["ip", "neigh", "replace", A.SOURCE6, "lladdr", "02:00:00:00:00:01", "dev", "lan0", "nud", "stale"])
    records = {"dual.example.test": ["203.0.113.25", "2001:db8:2::25"]}
    server = DnsServer(lab6, lab6.client_ip, ttl=1).start(records)
    router = Router(lab6, tmp_path / "router.log", "80 tcp dual.example.test\n", EGRESS_ROUTER_DEBUG="1",
                    EGRESS_SOURCE=f"{A.SOURCE}/24,{A.SOURCE6}/64", EGRESS_GATEWAY=f"{A.GATEWAY},{A.GATEWAY6}")
    try:
        assert wait_for(router.ready, 10), router.log.read_text()
        v4 = lab6.connect(80)
        assert (v4.server, v4.source) == (("203.0.113.25", 80), A.SOURCE), v4
        stream = lab6.open_stream(80, address=lab6.router_pod_ip6)
        assert (stream.report.server, stream.source) == (("2001:db8:2::25", 80), A.SOURCE6), stream.report
        assert stream.exchange(b"before\n") == b"before\n"
        v4_chain, v6_chain = "dns4_tcp_80_dual.example.test", "dns6_tcp_80_dual.example.test"
        before = lab6.nft_table()
        v4_rule, v6_rule = rule_of(before, v4_chain), rule_of(before, v6_chain)
        logged = len(router.log.read_text())

        server.set({"dual.example.test": ["203.0.113.25", "2001:db8:2::26"]})
        moved = wait_for(lambda: lab6.connect(80, address=lab6.router_pod_ip6, timeout=1).server == ("2001:db8:2::26", 80),
                         FLOOR + 1.0)
        assert moved, router.log.read_text()
        probe = lab6.connect(80, address=lab6.router_pod_ip6)
        assert (probe.server, probe.source) == (("2001:db8:2::26", 80), A.SOURCE6), probe
        for i in range(3):  # the open IPv6 connection keeps its NAT binding to the old address
            assert stream.exchange(f"after {i}\n".encode()) == f"after {i}\n".encode()
        assert stream.report.server == ("2001:db8:2::25", 80)
        stream.close()
        v4 = lab6.connect(80)
        assert (v4.server, v4.source) == (("203.0.113.25", 80), A.SOURCE), v4
        # The IPv4 chain was not rewritten: the same rule, its `since` included; the IPv6
        # one has the new address and a later `since`; the transaction named the IPv6 chain only.
        after = lab6.nft_table()
        assert rule_of(after, v4_chain) == v4_rule, (v4_rule, after)
        assert rule_of(after, v6_chain) != v6_rule and "2001:db8:2::26" in rule_of(after, v6_chain)
        written = [line for line in router.log.read_text()[logged:].splitlines() if "nft: " in line]
        assert written and any(v6_chain in line for line in written), written
        assert not any(v4_chain in line for line in written), written

        # The AAAA side now has nothing usable (loopback only), the A side is as it was: the
        # IPv6 side keeps its last address, as a whole name with nothing usable does, and
        # the failure is counted.
        failures = 'egress_router_dns_failures_total{name="dual.example.test"}'
        assert router.metric(failures) == 0
        server.set({"dual.example.test": ["203.0.113.25", "::1"]})
        assert wait_for(lambda: (router.metric(failures) or 0) >= 1, FLOOR + 2, 0.2), router.log.read_text()
        probe = lab6.connect(80, address=lab6.router_pod_ip6)
        assert (probe.server, probe.source) == (("2001:db8:2::26", 80), A.SOURCE6), probe
        assert lab6.connect(80).server == ("203.0.113.25", 80)
        table = lab6.nft_table()
        assert rule_of(table, v4_chain) == v4_rule and rule_of(table, v6_chain) == rule_of(after, v6_chain)
        assert "no usable IPv6 address, keeping its last ones" in router.log.read_text()
    finally:
        router.stop()
        server.close()
