"""Watcher, kernel JSON parsing, metrics, HTTP endpoints and `status`, without root."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from egress_router.config import load_environment
from egress_router.log import Log
from egress_router.metrics import Stats
from egress_router.neighbours.fake import RecordingAnnouncer
from egress_router.network.fake import FakeLink, FakeNet
from egress_router.network.state import Scope
from egress_router.nft.fake import FakeNft, FakeTableReader
from egress_router.nft.listing import parse_table
from egress_router.reconcile import Router
from egress_router.status import gather, render
from egress_router.watch import FileWatcher

ENV = {
    "EGRESS_SOURCE": "192.0.2.99/24",
    "EGRESS_GATEWAY": "192.0.2.1",
    "EGRESS_DESTINATION": "80 tcp 203.0.113.25\n8080 tcp 203.0.113.26 80\n203.0.113.27\n",
}

# `nft -j list table` of the seed's table, from the real nft 1.0.6 (tests/data/nft/VERSION);
# regenerate with `sudo .venv/bin/python scripts/capture_nft_listings.py`.
LISTINGS = Path(__file__).resolve().parent.parent / "data" / "nft"
FRESH = (LISTINGS / "seed-fresh.json").read_text()  # as the router leaves it
TRAFFIC = (LISTINGS / "seed-traffic.json").read_text()  # after 3 connections to each port
FOREIGN_RULE = (LISTINGS / "seed-foreign-rule.json").read_text()  # plus someone else's rule


def test_parse_table_reads_elements_counters_and_the_fallback() -> None:
    state = parse_table(TRAFFIC)
    assert state.maps["tcp4"]["80"].value == "203.0.113.25 . 80"
    assert state.maps["tcp4"]["8080"].value == "203.0.113.26 . 80"
    assert state.maps["conns_tcp4"]["8080"].packets == 3  # three connections made
    assert state.maps["bytes_tcp4"]["80"].bytes > 0
    assert state.counters["fallback4"][0] == 3  # port 5000 went to the fallback three times
    assert state.fallbacks == {4: "203.0.113.27"}


def test_traffic_is_not_drift() -> None:
    # nft 1.0.6 lists the traffic-filled sets without `flags dynamic`: their elements, counters
    # and the named counters all changed here, and none of it is the router's.
    assert parse_table(TRAFFIC).shape == parse_table(FRESH).shape


def test_a_rule_someone_else_added_is_drift() -> None:
    assert parse_table(FOREIGN_RULE).shape != parse_table(FRESH).shape


def _edited(document: str, edit: Callable[[dict[str, Any]], None]) -> str:
    parsed = json.loads(document)
    for obj in parsed["nftables"]:
        edit(obj)
    return json.dumps(parsed)


def test_a_changed_map_element_or_set_declaration_is_drift_but_element_order_is_not() -> None:
    def retarget(obj: dict[str, Any]) -> None:
        if obj.get("map", {}).get("name") == "tcp4":
            obj["map"]["elem"][0][1]["concat"][1] = 9999

    def reverse(obj: dict[str, Any]) -> None:
        if obj.get("map", {}).get("name") == "tcp4":
            obj["map"]["elem"].reverse()

    def resize(obj: dict[str, Any]) -> None:
        if obj.get("set", {}).get("name") == "bytes_tcp4":
            obj["set"]["size"] = 1024

    fresh = parse_table(FRESH).shape
    assert parse_table(_edited(FRESH, retarget)).shape != fresh
    assert parse_table(_edited(FRESH, resize)).shape != fresh
    assert parse_table(_edited(FRESH, reverse)).shape == fresh


def test_the_watcher_sees_a_data_symlink_swap_but_not_a_touch(tmp_path: Path) -> None:
    (tmp_path / "..v1").mkdir()
    (tmp_path / "..v1" / "rules").write_text("80 tcp 203.0.113.25\n")
    (tmp_path / "..data").symlink_to("..v1")
    (tmp_path / "rules").symlink_to("..data/rules")
    watcher = FileWatcher(str(tmp_path / "rules"))
    assert not watcher.changed()
    os.utime(tmp_path / "..v1" / "rules", ns=(1, 1))
    assert not watcher.changed()  # metadata only
    (tmp_path / "..v2").mkdir()
    (tmp_path / "..v2" / "rules").write_text("80 tcp 203.0.113.26\n")
    (tmp_path / "..tmp").symlink_to("..v2")
    os.rename(tmp_path / "..tmp", tmp_path / "..data")
    assert watcher.changed()
    assert not watcher.changed()


def fake_stack() -> tuple[Router, FakeTableReader, FakeNet]:
    nft, net = FakeNft(), FakeNet(links={"macvlan0": FakeLink()})
    router = Router(nft=nft, net=net, announcer=RecordingAnnouncer(), log=Log(stream=io.StringIO()))
    router.apply(load_environment(ENV))
    return router, FakeTableReader(nft, net), net


def test_metrics_report_kernel_counters_per_mapping_and_the_daemons_own() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from egress_router.metrics import Collector

    _, kernel, _ = fake_stack()
    kernel.counts = {"conns_tcp4": {"80": (7, 420)}, "bytes_tcp4": {"80": (30, 5000), "5000": (10, 700)}, "bytes_udp4": {"53": (1, 77)}}
    kernel.named = {"fallback4": (2, 120)}
    stats = Stats()
    stats.reloaded(True)
    stats.reloaded(False)
    stats.observe_apply(0.02)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(stats, kernel))  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert 'egress_router_connections_total{destination="203.0.113.25:80",port="80",protocol="tcp"} 7.0' in text
    assert 'egress_router_connections_total{destination="203.0.113.26:80",port="8080",protocol="tcp"} 0.0' in text
    assert 'egress_router_bytes_total{destination="203.0.113.25:80",port="80",protocol="tcp"} 5000.0' in text
    assert 'egress_router_connections_total{destination="203.0.113.27",port="*",protocol="any"} 2.0' in text
    assert 'egress_router_bytes_total{destination="203.0.113.27",port="*",protocol="any"} 777.0' in text
    assert 'egress_router_reloads_total{result="failure"} 1.0' in text
    assert 'egress_router_apply_duration_seconds_bucket{le="0.025"} 1.0' in text
    assert "egress_router_last_reload_success_timestamp_seconds " in text


def test_health_ready_and_metrics_over_http() -> None:
    from egress_router.http import HealthServer

    _, kernel, _ = fake_stack()
    stats = Stats()
    server = HealthServer(0, stats, kernel, Log(stream=io.StringIO()))
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert urllib.request.urlopen(base + "/healthz", timeout=5).status == 200
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(base + "/readyz", timeout=5)
        assert not_ready.value.code == 503
        stats.ready = True
        assert urllib.request.urlopen(base + "/readyz", timeout=5).status == 200
        body = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert "egress_router_connections_total" in body
    finally:
        server.stop()


def test_status_table_and_json_read_the_kernel() -> None:
    _, kernel, net = fake_stack()
    kernel.counts = {"conns_tcp4": {"80": (7, 420)}, "bytes_tcp4": {"80": (30, 5000)}}
    state = gather(Scope("macvlan0", "eth0"), net, kernel)
    assert state["interface"]["addresses"] == ["192.0.2.99/24"]
    assert state["routes"] == [{"family": "ipv4", "gateway": "192.0.2.1", "device": "macvlan0"}]
    assert {"protocol": "tcp", "port": "80", "destination": "203.0.113.25:80", "connections": 7, "bytes": 5000} in state["mappings"]
    assert state["fallbacks"][0]["destination"] == "203.0.113.27"
    json.dumps(state)
    text = render(state)
    assert "203.0.113.25:80" in text and "PROTOCOL" in text and "192.0.2.1" in text
    assert state["rules"] == ["ipv4 priority 2430 fwmark 0x2430 lookup 2430"]
    assert "rule       ipv4 priority 2430 fwmark 0x2430 lookup 2430" in text
    missing = gather(Scope("macvlan9", "eth0"), net, kernel)
    assert "MISSING" in render(missing)


def test_init_mode_does_not_import_the_metrics_stack() -> None:
    code = (
        "import sys, egress_router.cli, egress_router.reconcile, egress_router.config;"
        "bad = [m for m in ('prometheus_client', 'http.server', 'egress_router.http') if m in sys.modules];"
        "print(bad); raise SystemExit(bool(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
