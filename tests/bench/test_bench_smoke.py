"""A tiny run of the benchmark suite, to keep `python -m benchmarks` working: two sizes, a handful
of connections, a one-second iperf. It checks that a report and a plot come out with every row
in them, never what the figures are (these are benchmarks, not timed tests)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import connrate
from benchmarks.__main__ import main
from benchmarks.layouts import LAYOUTS
from benchmarks.throughput import PATHS

pytestmark = pytest.mark.lab

SMOKE = [
    "--mappings", "1,100", "--connects", "20", "--warmup", "2", "--rounds", "1",
    "--iperf-seconds", "1", "--iperf-repeats", "1", "--apply-repeats", "1",
    "--connrate-seconds", "1", "--connrate-repeats", "1", "--connrate-connections", "8",
    "--live-size", "100", "--live-rounds", "2", "--init-runs", "2", "--failover-trials", "1",
]


def test_smoke_run_writes_a_table_and_plots_with_every_row(tmp_path: Path) -> None:
    # ./scripts/setup.sh (make test) installs these; a run without them would test nothing.
    missing = [tool for tool in ("iperf3", "haproxy", "socat", "nginx", "wrk") if shutil.which(tool) is None]
    assert not missing, f"not installed: {', '.join(missing)} (./scripts/setup.sh installs them)"
    out = tmp_path / "results"

    assert main([*SMOKE, "--out", str(out)]) == 0

    report = (out / "results.md").read_text()
    results = json.loads((out / "results.json").read_text())
    for png in ("latency.png", "apply.png", "failover.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for layout in LAYOUTS:
        assert set(results["latency"]["layouts"][layout]) == {"1", "100"}
    latency_rows = [line for line in report.splitlines() if line.startswith(("| 1 |", "| 100 |"))]
    assert len(latency_rows) >= 4  # latency and apply tables, one row per size each
    for path in (*PATHS, *connrate.PATHS):
        assert f"| {path} |" in report
    for target in ("latency, 1 mapping (maps) / floor", "throughput / floor",
                   "new connections per second, router / floor", "new connections per second, HAProxy / floor"):
        assert f"| {target} |" in report
    assert all(p["requests"] > 0 for p in results["connrate"]["paths"].values())
    for heading in ("## Targets", "## New-connection latency", "## Bulk throughput", "## New connections per second",
                    "## Apply time against N", "## Start-up and memory", "## A named rule next to a literal one",
                    "## Failover (HA)"):
        assert heading in report
    assert results["apply"]["live_change"]["element_only"] is True
    assert results["startup"]["parse"]["lines"] == 10000 and "| read and parse 10,000 lines (median) |" in report
    assert set(results["failover"]["kinds"]) == {"crash", "node death", "LAN link down", "SIGTERM"}
    assert "cpu" in results["machine"] and "kernel" in results["machine"]
