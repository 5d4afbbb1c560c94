"""The legacy daemon against the in-memory fakes: reloads, rejections, drift repair."""

from __future__ import annotations

import io
import ipaddress
import os
from pathlib import Path

import pytest

from egress_router.config import load_environment
from egress_router.daemon import CHECK_EVERY, Daemon
from egress_router.log import Log
from egress_router.metrics import Stats
from egress_router.neighbours.fake import RecordingAnnouncer
from egress_router.network.fake import FakeLink, FakeNet, pod_network
from egress_router.network.state import MAIN_TABLE, Route
from egress_router.nft.fake import FakeNft, FakeTableReader
from egress_router.reconcile import Router
from egress_router.schema import ROUTE_TABLE

RULES = "80 tcp 203.0.113.25\n8080 tcp 203.0.113.26 80\n53 udp 203.0.113.27\n"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def configmap(directory: Path, text: str, stamp: str) -> None:
    """What the kubelet does: a new timestamped dir, then `..data` renamed onto it."""
    target = directory / f"..{stamp}"
    target.mkdir()
    (target / "destinations").write_text(text)
    tmp = directory / "..data_tmp"
    tmp.symlink_to(target.name)
    os.rename(tmp, directory / "..data")


@pytest.fixture
def mounted(tmp_path: Path) -> Path:
    configmap(tmp_path, RULES, "2024_01_01_00_00_00.1")
    (tmp_path / "destinations").symlink_to("..data/destinations")
    return tmp_path


def make_daemon(path: Path) -> tuple[Daemon, FakeNft, FakeNet, io.StringIO, Clock]:
    env = {
        "EGRESS_SOURCE": "192.0.2.99/24",
        "EGRESS_GATEWAY": "192.0.2.1",
        "EGRESS_DESTINATION_FILE": str(path / "destinations"),
    }
    net = FakeNet(links={"macvlan0": FakeLink(), "eth0": FakeLink(up=True)}, routes=pod_network())
    nft, stream, clock = FakeNft(), io.StringIO(), Clock()
    log = Log(stream=stream)
    router = Router(nft=nft, net=net, announcer=RecordingAnnouncer(), log=log)
    config = load_environment(env)
    router.apply(config)
    daemon = Daemon(router, config, env, log, FakeTableReader(nft, net), Stats(), clock)
    daemon.started()
    return daemon, nft, net, stream, clock


def test_a_configmap_swap_applies_only_the_changed_elements(mounted: Path) -> None:
    daemon, nft, _, _, _ = make_daemon(mounted)
    applied = len(nft.scripts)
    configmap(mounted, RULES.replace("203.0.113.26 80", "203.0.113.27 8080"), "2024_01_01_00_00_01.2")
    daemon.tick()
    assert len(nft.scripts) == applied + 1
    script = nft.scripts[-1]
    assert "delete table" not in script and "chain" not in script
    assert "8080 : 203.0.113.27 . 8080" in script
    assert nft.elements("inet", "egress_router", "tcp4") == {
        "80": "203.0.113.25 . 80",
        "8080": "203.0.113.27 . 8080",
    }
    assert daemon.stats.reloads == {"success": 1, "failure": 0}
    assert daemon.stats.ready


def test_nothing_is_applied_when_the_file_is_unchanged(mounted: Path) -> None:
    daemon, nft, _, _, _ = make_daemon(mounted)
    applied = len(nft.scripts)
    configmap(mounted, RULES, "2024_01_01_00_00_01.2")  # same content, new inode
    daemon.tick()
    daemon.tick()
    assert len(nft.scripts) == applied
    assert daemon.stats.reloads == {"success": 0, "failure": 0}


def test_an_invalid_update_keeps_the_old_rules_and_is_counted(mounted: Path) -> None:
    daemon, nft, _, stream, _ = make_daemon(mounted)
    before = nft.elements("inet", "egress_router", "tcp4")
    configmap(mounted, "80 tcp 203.0.113.25\n8080 tcp not-an-address\n", "2024_01_01_00_00_01.2")
    daemon.tick()
    assert nft.elements("inet", "egress_router", "tcp4") == before
    assert daemon.stats.reloads == {"success": 0, "failure": 1}
    assert "line 2" in stream.getvalue() and "not-an-address" in stream.getvalue()
    assert daemon.config.destinations.mappings[1].address == ipaddress.ip_address("203.0.113.26")


def test_a_refused_apply_is_counted_and_retried_by_the_next_check(mounted: Path) -> None:
    daemon, nft, _, _, clock = make_daemon(mounted)
    in_force = daemon.config
    nft.fail_with = "Could not process rule: No buffer space available"
    configmap(mounted, RULES + "443 tcp 203.0.113.25\n", "2024_01_01_00_00_01.2")
    daemon.tick()
    assert daemon.stats.reloads["failure"] == 1
    # The old rules still serve: the pod stays ready, and nothing takes them for drift.
    assert daemon.stats.ready and daemon.config == in_force
    assert "443" not in nft.elements("inet", "egress_router", "tcp4")
    clock.now += CHECK_EVERY
    daemon.tick()
    assert "443" in nft.elements("inet", "egress_router", "tcp4")
    assert daemon.stats.ready


def test_sighup_reloads_even_without_a_change(mounted: Path) -> None:
    daemon, _, _, _, _ = make_daemon(mounted)
    daemon.tick(reload=True)
    assert daemon.stats.reloads == {"success": 1, "failure": 0}


STRAY = Route(4, MAIN_TABLE, "192.0.2.0/24", None, "macvlan0", "link", 0, "192.0.2.99")


def drop_route(net: FakeNet, destination: str) -> None:
    net.routes = [r for r in net.routes if not (r.table == ROUTE_TABLE and r.destination == destination)]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda nft, net: nft.tables.clear(), id="table deleted"),
        pytest.param(
            lambda nft, net: nft.tables["inet egress_router"].maps["tcp4"].pop(80),
            id="element deleted",
        ),
        pytest.param(lambda nft, net: setattr(net.links["macvlan0"], "addresses", []), id="address removed"),
        pytest.param(lambda nft, net: drop_route(net, "default"), id="default route removed"),
        pytest.param(lambda nft, net: drop_route(net, "192.0.2.0/24"), id="subnet route removed"),
        pytest.param(lambda nft, net: net.rules.clear(), id="fwmark rule removed"),
        pytest.param(lambda nft, net: net.routes.append(STRAY), id="a route through macvlan0 in the main table"),
        pytest.param(lambda nft, net: net.sysctls.update({"net/ipv4/ip_forward": "0"}), id="forwarding off"),
    ],
)
def test_drift_is_repaired_by_the_periodic_check(mounted: Path, damage) -> None:  # type: ignore[no-untyped-def]
    daemon, nft, net, _, clock = make_daemon(mounted)
    good_table = nft.list_table("inet", "egress_router")
    good_network = (sorted(net.routes), list(net.rules), list(net.links["macvlan0"].addresses))
    damage(nft, net)
    daemon.tick()  # not due yet
    assert daemon.stats.drift_repairs == 0
    clock.now += CHECK_EVERY
    daemon.tick()
    assert daemon.stats.drift_repairs == 1
    assert nft.list_table("inet", "egress_router") == good_table
    assert (sorted(net.routes), list(net.rules), list(net.links["macvlan0"].addresses)) == good_network
    assert net.sysctls["net/ipv4/ip_forward"] == "1"
    assert daemon.stats.ready


def test_a_check_without_drift_changes_nothing(mounted: Path) -> None:
    daemon, nft, net, _, clock = make_daemon(mounted)
    scripts, taken = len(nft.scripts), len(net.taken)
    for _ in range(3):
        clock.now += CHECK_EVERY
        daemon.tick()
    assert (len(nft.scripts), len(net.taken), daemon.stats.drift_repairs) == (scripts, taken, 0)


def test_a_vanished_file_is_a_failed_reload_and_its_return_a_reload(mounted: Path) -> None:
    daemon, _, _, _, _ = make_daemon(mounted)
    os.unlink(mounted / "..data")
    daemon.tick()
    assert daemon.stats.reloads == {"success": 0, "failure": 1}
    configmap(mounted, RULES + "443 tcp 203.0.113.25\n", "2024_01_01_00_00_02.3")
    daemon.tick()
    assert daemon.stats.reloads == {"success": 1, "failure": 1}


def test_a_rejected_reload_is_one_log_event_however_many_lines_are_wrong(mounted: Path) -> None:
    daemon, nft, _, stream, _ = make_daemon(mounted)
    before = nft.elements("inet", "egress_router", "tcp4")
    configmap(mounted, RULES + "80 tcp 203.0.113.26\n" * 52000, "2024_01_01_00_00_01.2")
    daemon.tick()
    (line,) = [entry for entry in stream.getvalue().splitlines() if "rejected the new configuration" in entry]
    assert "problems=52000 " in line
    assert line.count("is already used on line 1") == 5
    assert daemon.stats.reloads == {"success": 0, "failure": 1}
    assert nft.elements("inet", "egress_router", "tcp4") == before


def _put(target: Path, kind: str) -> None:
    """Put something other than a readable file where the ConfigMap's key points."""
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        target.rmdir()
    if kind == "directory":
        target.mkdir()
    elif kind == "symlink loop":
        target.symlink_to("destinations")
    elif kind == "too big":
        with open(target, "wb") as handle:  # sparse
            handle.truncate(40 * 2**20)


def test_each_kind_of_unreadable_file_is_reported_and_counted_once(mounted: Path) -> None:
    daemon, nft, _, stream, _ = make_daemon(mounted)
    before = nft.elements("inet", "egress_router", "tcp4")
    target = mounted / "..data" / "destinations"
    kinds = [
        ("missing", "No such file"),
        ("directory", "it is a directory"),
        ("symlink loop", "Too many levels of symbolic links"),
        ("too big", "40.0 MiB, over the 16 MiB limit"),
    ]
    for failures, (kind, words) in enumerate(kinds, start=1):
        _put(target, kind)
        mark = len(stream.getvalue())
        daemon.tick()
        daemon.tick()  # the same state again is not another attempt
        assert daemon.stats.reloads == {"success": 0, "failure": failures}, kind
        (line,) = stream.getvalue()[mark:].splitlines()[1:]  # after "destination file changed"
        assert "rejected the new configuration" in line and words in line, line
        assert nft.elements("inet", "egress_router", "tcp4") == before
        assert daemon.stats.ready


def _connections(daemon: Daemon, port: str = "80") -> int:
    from egress_router.metrics import traffic

    state = daemon.reader.read_table("inet", "egress_router")
    assert state is not None
    for labels, connections, _ in daemon.stats.counted(traffic(state)):
        if labels["port"] == port:
            return connections
    raise AssertionError(f"no series for port {port}")


@pytest.mark.parametrize("read_before_the_repair", [True, False], ids=["read at the check", "read at a scrape only"])
def test_exported_counters_go_on_from_where_they_were_when_a_repair_rebuilds_the_table(
    mounted: Path, read_before_the_repair: bool
) -> None:
    daemon, nft, _, _, clock = make_daemon(mounted)
    reader = daemon.reader
    assert isinstance(reader, FakeTableReader)
    reader.counts = {"conns_tcp4": {"80": (5, 300)}}
    assert _connections(daemon) == 5
    if read_before_the_repair:
        reader.counts = {"conns_tcp4": {"80": (6, 360)}}  # one more before someone altered it
        nft.tables["inet egress_router"].maps["tcp4"].pop(8080)
    else:
        nft.tables.clear()  # nothing left to read at the check
    clock.now += CHECK_EVERY
    daemon.tick()
    assert daemon.stats.drift_repairs == 1
    reader.counts = {"conns_tcp4": {"80": (2, 120)}}  # the rebuilt table counted 2 since
    assert _connections(daemon) == (6 if read_before_the_repair else 5) + 2


def test_a_counter_that_restarts_unannounced_still_never_goes_down(mounted: Path) -> None:
    daemon, _, _, _, _ = make_daemon(mounted)
    reader = daemon.reader
    assert isinstance(reader, FakeTableReader)
    reader.counts = {"conns_tcp4": {"80": (9, 540)}}
    assert _connections(daemon) == 9
    reader.counts = {"conns_tcp4": {"80": (1, 60)}}
    assert _connections(daemon) == 10


def test_traffic_alone_is_no_drift(mounted: Path) -> None:
    daemon, nft, _, _, clock = make_daemon(mounted)
    reader = daemon.reader
    assert isinstance(reader, FakeTableReader)
    scripts = len(nft.scripts)
    for n in range(1, 4):
        reader.counts = {"conns_tcp4": {"80": (n, 60 * n)}, "bytes_tcp4": {"80": (9 * n, 600 * n)}}
        clock.now += CHECK_EVERY
        daemon.tick()
    assert daemon.stats.drift_repairs == 0 and len(nft.scripts) == scripts
