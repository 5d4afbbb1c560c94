"""The legacy daemon on the real kernel: live reload, rejection, drift repair, health, metrics.

One lab for the module; every test starts its own router from a clean router namespace and a
ConfigMap-style directory of its own, and stops it.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from egress_router.lab import SEED_DESTINATION, Lab, seed_env
from egress_router.lab.addresses import SOURCE
from egress_router.lab.wirings import WIRINGS

pytestmark = pytest.mark.lab

ROUTER = "198.51.100.2"
SERVERS = [
    ("203.0.113.25", 80, "tcp"),
    ("203.0.113.26", 80, "tcp"),
    ("203.0.113.26", 443, "tcp"),
    ("203.0.113.27", 80, "tcp"),
    ("203.0.113.27", 5000, "tcp"),
]
CHANGED = SEED_DESTINATION.replace("8080 tcp 203.0.113.26 80", "8080 tcp 203.0.113.27 80")


@pytest.fixture(scope="module", params=WIRINGS)
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    with Lab(wiring=request.param) as built:
        built.serve(SERVERS)
        yield built


class ConfigMap:
    """A mounted ConfigMap as the kubelet writes it: files in `..<stamp>`, `..data` pointing
    there, the key a symlink through `..data`; an update renames a new `..data` in place."""

    def __init__(self, root: Path, text: str) -> None:
        self.root, self.updates = root, 0
        root.mkdir()
        self.update(text)
        (root / "destinations").symlink_to("..data/destinations")

    @property
    def path(self) -> str:
        return str(self.root / "destinations")

    def update(self, text: str) -> None:
        self.update_with(lambda key: key.write_text(text))

    def update_with(self, make: Callable[[Path], object]) -> None:
        """A new version whose key `make` creates (a file, or something that is not one)."""
        self.updates += 1
        target = self.root / f"..2024_01_01_00_00_{self.updates:02d}.{os.getpid()}"
        target.mkdir()
        make(target / "destinations")
        (self.root / "..data_tmp").symlink_to(target.name)
        os.rename(self.root / "..data_tmp", self.root / "..data")


@dataclass
class Running:
    lab: Lab
    process: subprocess.Popen[str]
    configmap: ConfigMap
    log: Path

    def http(self, path: str) -> tuple[int, str]:
        return http_get(self.lab, path)

    def metric(self, line_start: str) -> float:
        _, body = self.http("/metrics")
        for line in body.splitlines():
            if line.startswith(line_start + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def http_get(lab: Lab, path: str, port: int = 9090, timeout: float = 3.0) -> tuple[int, str]:
    """GET from the client pod to the router pod's cluster address; OSError without an answer."""
    reply = lab.client_get(port, path, timeout)
    if reply.status is None:
        raise OSError(reply.error)
    return reply.status, reply.body


def wait_for(check, timeout: float, every: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


@pytest.fixture
def router(lab: Lab, tmp_path: Path) -> Iterator[Running]:
    lab.reset_router()
    configmap = ConfigMap(tmp_path / "config", SEED_DESTINATION)
    env = seed_env("legacy", EGRESS_DESTINATION_FILE=configmap.path)
    del env["EGRESS_DESTINATION"]
    log = tmp_path / "router.log"
    with open(log, "w") as out:
        process = lab.start_router(env, stdout=out, stderr=subprocess.STDOUT)
    running = Running(lab, process, configmap, log)

    def ready() -> bool:
        try:
            return running.http("/readyz")[0] == 200
        except OSError:
            return False

    assert wait_for(ready, 10), log.read_text()
    yield running
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(5)


def test_a_configmap_update_redirects_within_2s_and_keeps_a_long_lived_connection(router: Running) -> None:
    lab = router.lab
    stream = lab.open_stream(8080)
    assert stream.report.server == ("203.0.113.26", 80) and stream.source == "192.0.2.99"
    assert stream.exchange(b"before\n") == b"before\n"

    started = time.monotonic()
    router.configmap.update(CHANGED)
    unchanged_ok = []

    def redirected() -> bool:
        unchanged_ok.append(lab.connect(80).server == ("203.0.113.25", 80))
        return lab.connect(8080).server == ("203.0.113.27", 80)

    assert wait_for(redirected, 3), router.log.read_text()
    latency = time.monotonic() - started
    print(f"\nreload latency (file swap to new redirect seen by a client): {latency:.3f}s")
    assert latency < 2.0
    assert all(unchanged_ok), "the unchanged mapping stopped working during the reload"
    # The established connection keeps its NAT: same server, still exchanging data.
    for i in range(5):
        assert stream.exchange(f"after {i}\n".encode()) == f"after {i}\n".encode()
    stream.close()
    # Counted once the whole reconcile (nft, then addresses and routes) is done.
    assert wait_for(lambda: router.metric('egress_router_reloads_total{result="success"}') == 1, 2)


def test_an_invalid_update_keeps_the_old_rules_and_counts_a_failure(router: Running) -> None:
    lab = router.lab
    router.configmap.update("80 tcp 203.0.113.25\n8080 tcp 203.0.113.300 80\n")
    failure = 'egress_router_reloads_total{result="failure"}'
    assert wait_for(lambda: router.metric(failure) == 1, 3)
    assert lab.connect(8080).server == ("203.0.113.26", 80)
    assert lab.connect(5000).server == ("203.0.113.27", 5000)  # the fallback is still there
    log = router.log.read_text()
    assert "line 2" in log and "203.0.113.300" in log
    assert router.http("/readyz")[0] == 200


def test_a_deleted_table_comes_back_by_itself(router: Running) -> None:
    lab = router.lab
    lab.exec("router", ["nft", "delete", "table", "inet", "egress_router"])
    assert not lab.connect(80, timeout=1).ok
    started = time.monotonic()
    assert wait_for(lambda: lab.connect(80, timeout=0.5).server == ("203.0.113.25", 80), 8, 0.2)
    print(f"\ntable restored after {time.monotonic() - started:.1f}s")
    assert router.metric("egress_router_drift_repairs_total") == 1


def test_health_and_metrics_answer_on_the_pod_address_despite_the_fallback(router: Running) -> None:
    assert "203.0.113.27" in SEED_DESTINATION.splitlines()[-1]  # a fallback rule is in force
    assert router.http("/healthz") == (200, "ok\n")
    code, body = router.http("/metrics")
    assert code == 200
    assert "egress_router_connections_total" in body and "egress_router_conntrack_entries_limit" in body
    assert router.lab.connect(5000).server == ("203.0.113.27", 5000)


def test_the_connection_counter_rises_by_exactly_the_connections_made(router: Running) -> None:
    lab = router.lab
    series = 'egress_router_connections_total{destination="203.0.113.26:80",port="8080",protocol="tcp"}'
    moved = 'egress_router_bytes_total{destination="203.0.113.26:80",port="8080",protocol="tcp"}'
    fallback = 'egress_router_connections_total{destination="203.0.113.27",port="*",protocol="any"}'
    before, bytes_before, fallback_before = router.metric(series), router.metric(moved), router.metric(fallback)
    for _ in range(7):
        assert lab.connect(8080).ok
    for _ in range(3):
        assert lab.connect(5000).ok
    assert router.metric(series) - before == 7
    assert router.metric(fallback) - fallback_before == 3
    assert router.metric(moved) > bytes_before


def test_a_connection_whose_first_syn_was_lost_beyond_the_router_counts_once(router: Running) -> None:
    """The LAN's gateway drops the first SYN of every connection to port 80: the client's
    retransmission (about 1 s later) gets through. The router saw two SYNs of one connection."""
    lab = router.lab
    series = 'egress_router_connections_total{destination="203.0.113.26:80",port="8080",protocol="tcp"}'
    before = router.metric(series)
    lab.exec("gw", ["nft", "-f", "-"], input=(
        "table inet lossy {\n"
        "\tset seen { type ipv4_addr . inet_service; flags dynamic; timeout 30s; }\n"
        "\tchain forward { type filter hook forward priority -5; policy accept;\n"
        "\t\ttcp dport 80 tcp flags & (syn | ack) == syn ip saddr . tcp sport @seen accept\n"
        "\t\ttcp dport 80 tcp flags & (syn | ack) == syn add @seen { ip saddr . tcp sport } counter drop\n"
        "\t}\n}\n"
    ))
    try:
        for _ in range(2):
            probe = lab.connect(8080, timeout=5)
            assert probe.ok and probe.server == ("203.0.113.26", 80) and probe.source == SOURCE
        dropped = lab.exec("gw", ["nft", "list", "chain", "inet", "lossy", "forward"]).stdout
        assert "counter packets 2 " in dropped, dropped  # each connection lost its first SYN
    finally:
        lab.exec("gw", ["nft", "delete", "table", "inet", "lossy"], check=False)
    assert router.metric(series) - before == 2


def test_sighup_reloads_and_sigterm_ends_promptly(router: Running) -> None:
    process = router.process
    rss = _vm_rss_kb(process.pid)
    print(f"\nlegacy mode VmRSS: {rss / 1024:.1f} MB")
    assert rss < 40 * 1024
    process.send_signal(signal.SIGHUP)
    success = 'egress_router_reloads_total{result="success"}'
    assert wait_for(lambda: router.metric(success) == 1, 3)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(2) == 0
    print(f"SIGTERM to exit: {time.monotonic() - started:.3f}s")
    assert time.monotonic() - started < 1.0


def _vm_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _sparse(size: int) -> Callable[[Path], object]:
    def make(key: Path) -> None:
        with open(key, "wb") as handle:
            handle.truncate(size)
    return make


BAD_FILES: list[tuple[str, Callable[[Path], object], str]] = [
    ("a 57 MB file", _sparse(57 * 2**20), "57.0 MiB, over the 16 MiB limit"),
    # Just under the cap: read and parsed, and the parse gives up after 100,000 problems.
    ("16 MB of junk", lambda key: key.write_bytes(b"x\n" * 8_000_000), "stopped=EGRESS_DESTINATION_FILE"),
    # 40,000 duplicates, and the fallback no longer last.
    ("a full ConfigMap of duplicate ports",
     lambda key: key.write_text(SEED_DESTINATION + "8080 tcp 203.0.113.27 80\n" * 40_000), "problems=40001 "),
    ("a missing file", lambda key: None, "No such file or directory"),
    ("a named pipe", lambda key: os.mkfifo(key), "it is a named pipe"),  # opening it must not hang
    ("a directory", lambda key: key.mkdir(), "it is a directory"),
    ("a symlink loop", lambda key: key.symlink_to("destinations"), "Too many levels of symbolic links"),
]


def test_bad_files_of_any_size_keep_the_old_rules_with_bounded_memory(router: Running) -> None:
    lab, process = router.lab, router.process
    started = time.monotonic()
    failure = 'egress_router_reloads_total{result="failure"}'
    for attempt, (name, make, words) in enumerate(BAD_FILES, start=1):
        mark = len(router.log.read_text())
        router.configmap.update_with(make)
        assert wait_for(lambda n=attempt: router.metric(failure) == n, 10), (name, router.log.read_text()[-2000:])
        assert lab.connect(8080).server == ("203.0.113.26", 80), name
        assert lab.connect(5000).server == ("203.0.113.27", 5000), name
        assert router.http("/healthz") == (200, "ok\n") and router.http("/readyz")[0] == 200
        rejected = [line for line in router.log.read_text()[mark:].splitlines() if "rejected" in line]
        assert len(rejected) == 1 and words in rejected[0], (name, rejected)
    status = _vm_kb(process.pid)
    print(f"\nafter the bad files: VmRSS {status['VmRSS'] / 1024:.1f} MB, VmHWM {status['VmHWM'] / 1024:.1f} MB")
    assert status["VmHWM"] < 100 * 1024
    # Past its announcements (1 s and 3 s after start): none of them left a process behind.
    time.sleep(max(0.0, 4.0 - (time.monotonic() - started)))
    assert _children(process.pid) == []
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(2) == 0
    assert time.monotonic() - signalled < 1.0


def _vm_kb(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as status:
        return {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in status) if k in ("VmRSS", "VmHWM")}


def _children(pid: int) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(f"{entry} {stat.split(' (', 1)[1].split(')')[0]} state {fields[0]}")
    return found


def test_health_and_metrics_answer_within_a_second_while_500_idle_connections_are_held(router: Running) -> None:
    from egress_router.http import TIMEOUT

    lab, process = router.lab, router.process
    seconds = TIMEOUT + 2.5  # past the server's timeout: every idle connection is dropped once
    abuser = lab.popen(
        "client",
        [sys.executable, "-m", "egress_router.lab.idle_clients", ROUTER, "9090", "500", str(seconds)],
        env=lab.router_env({}),
        stdout=subprocess.PIPE,
    )
    assert abuser.stdout is not None and abuser.stdout.readline().strip() == "ready"
    slowest, probes = 0.0, 0
    deadline = time.monotonic() + seconds - 0.5
    while time.monotonic() < deadline:
        for path in ("/healthz", "/metrics"):
            started = time.monotonic()
            code, body = http_get(lab, path, timeout=1.0)  # kubelet's default probe timeout
            slowest = max(slowest, time.monotonic() - started)
            assert code == 200 and body, path
            probes += 1
        time.sleep(0.05)
    counts = json.loads(abuser.stdout.readline())
    assert abuser.wait(5) == 0
    status = _vm_kb(process.pid)
    print(f"\n{probes} probes, slowest {slowest * 1e3:.0f} ms; idle clients {counts}; "
          f"router VmRSS {status['VmRSS'] / 1024:.1f} MB, VmHWM {status['VmHWM'] / 1024:.1f} MB")
    assert counts["dropped"] >= 500
    assert status["VmHWM"] < 60 * 1024
    assert all(line.startswith("egress-router: ") for line in router.log.read_text().splitlines())
    assert router.lab.connect(8080).server == ("203.0.113.26", 80)
# -- traffic is not drift; a real repair keeps the counters counting --------------------------------

CHECK_EVERY = "0.5"  # EGRESS_ROUTER_CHECK_EVERY: the drift check ten times as often as in a pod
SEED_PORTS = (80, 8080, 8443, 5000)  # three mappings and the fallback


@pytest.fixture
def fast_checks(lab: Lab, tmp_path: Path) -> Iterator[Running]:
    """A router whose drift check runs every half second."""
    lab.reset_router()
    configmap = ConfigMap(tmp_path / "config", SEED_DESTINATION)
    env = seed_env("legacy", EGRESS_DESTINATION_FILE=configmap.path, EGRESS_ROUTER_CHECK_EVERY=CHECK_EVERY)
    del env["EGRESS_DESTINATION"]
    log = tmp_path / "router.log"
    with open(log, "w") as out:
        process = lab.start_router(env, stdout=out, stderr=subprocess.STDOUT)
    running = Running(lab, process, configmap, log)
    assert wait_for(lambda: _ready(running), 10), log.read_text()
    yield running
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(5)


def _ready(running: Running) -> bool:
    try:
        return running.http("/readyz")[0] == 200
    except OSError:
        return False


def traffic_series(running: Running) -> dict[str, float]:
    """Every exported traffic counter: connections and bytes, per mapping and fallback."""
    _, body = running.http("/metrics")
    out = {}
    for line in body.splitlines():
        if line.startswith(("egress_router_connections_total{", "egress_router_bytes_total{")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def kernel_counters(lab: Lab) -> dict[str, int]:
    """The kernel's own counters in the router's table: the named fallback counters and every
    element of the traffic-filled sets."""
    from egress_router.nft.listing import parse_table

    listing = lab.exec("router", ["nft", "-j", "list", "table", "inet", "egress_router"]).stdout
    state = parse_table(listing)
    out = {f"counter {name}": packets for name, (packets, _) in state.counters.items()}
    for set_name, entries in state.maps.items():
        if set_name.startswith(("conns_", "bytes_")):
            for key, entry in entries.items():
                out[f"{set_name}[{key}] packets"] = entry.packets
    return out


def rising(samples: list[dict[str, float]]) -> list[str]:
    """The series that ever went down between two samples."""
    fell = []
    for before, after in itertools.pairwise(samples):
        fell += [f"{k}: {v} -> {after.get(k)}" for k, v in before.items() if after.get(k, -1.0) < v]
    return fell


def test_traffic_across_many_drift_checks_is_no_drift_and_every_counter_only_rises(fast_checks: Running) -> None:
    lab = fast_checks.lab
    exported: list[dict[str, float]] = []
    kernel: list[dict[str, float]] = []
    deadline = time.monotonic() + 4.0  # eight drift checks
    rounds = 0
    while time.monotonic() < deadline and rounds < 200:
        rounds += 1
        for port in SEED_PORTS:
            assert lab.connect(port).ok
        exported.append(traffic_series(fast_checks))
        kernel.append({k: float(v) for k, v in kernel_counters(lab).items()})
    print(f"\n{rounds} rounds of {len(SEED_PORTS)} connections over 4 s")
    assert rounds >= 8
    assert fast_checks.metric("egress_router_drift_repairs_total") == 0, fast_checks.log.read_text()
    assert "changed by someone else" not in fast_checks.log.read_text()
    assert rising(exported) == [] and rising(kernel) == []
    connections = {k: v for k, v in exported[-1].items() if k.startswith("egress_router_connections")}
    assert len(connections) == 4
    assert all(v - exported[0][k] == rounds - 1 for k, v in connections.items()), (exported[0], connections)
    assert kernel[-1]["counter fallback4"] - kernel[0]["counter fallback4"] == rounds - 1


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(["delete", "table", "inet", "egress_router"], id="table deleted"),
        pytest.param(
            ["add", "rule", "inet", "egress_router", "prerouting", "tcp", "dport", "8080", "drop"],
            id="someone else's rule in the router's chain",
        ),
    ],
)
def test_a_real_repair_rebuilds_the_table_and_the_metrics_keep_counting(fast_checks: Running, damage: list[str]) -> None:
    lab = fast_checks.lab
    for _ in range(3):
        for port in SEED_PORTS:
            assert lab.connect(port).ok
    before = traffic_series(fast_checks)
    lab.exec("router", ["nft", *damage])
    assert wait_for(lambda: fast_checks.metric("egress_router_drift_repairs_total") == 1, 5, 0.1), fast_checks.log.read_text()
    assert lab.connect(8080).server == ("203.0.113.26", 80)  # the rule someone added is gone
    assert "tcp dport 8080 drop" not in (lab.nft_table() or "")
    after_repair = traffic_series(fast_checks)
    assert rising([before, after_repair]) == [], "a counter went down across the repair"
    for port in SEED_PORTS:
        assert lab.connect(port).ok
    now = traffic_series(fast_checks)
    connections = [k for k in now if k.startswith("egress_router_connections")]
    # 8080 was tried once more above, after the repair.
    extra = {k: 2 if 'port="8080"' in k else 1 for k in connections}
    assert {k: now[k] - before[k] for k in connections} == extra
