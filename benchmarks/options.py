"""How much to measure: the full run of `make bench`, `--quick`, and the CI smoke run."""

from __future__ import annotations

from dataclasses import dataclass, replace

SECTIONS = ("latency", "names", "throughput", "connrate", "apply", "startup", "failover")


@dataclass(frozen=True)
class Options:
    mappings: tuple[int, ...] = (1, 100, 1000, 10000, 50000)
    connects: int = 2000  # timed connections per round and layout
    warmup: int = 200  # untimed connections before them
    rounds: int = 5
    # Sleep in accept()/recv() instead of busy-polling (noisier); the reported figure is the
    # median of the rounds' figures.
    blocking: bool = False
    iperf_seconds: int = 3
    iperf_repeats: int = 3
    # Short runs, many rounds: a slow spell of the shared machine then spoils a run, not a path.
    connrate_seconds: int = 2  # per wrk run
    connrate_repeats: int = 9  # rounds, one wrk run per path each
    connrate_connections: int = 16  # wrk's concurrent connections
    apply_repeats: int = 5
    live_rounds: int = 20
    init_runs: int = 20
    live_size: int = 10000  # mappings of the live rule set that a small change is applied to
    live_change: int = 10  # lines changed
    failover_trials: int = 10  # per kind of failure (failover.py)
    sections: tuple[str, ...] = SECTIONS


FULL = Options()
QUICK = replace(
    FULL,
    mappings=(1, 100, 1000, 10000),
    connects=500,
    warmup=50,
    rounds=3,
    iperf_seconds=2,
    iperf_repeats=2,
    connrate_seconds=1,
    connrate_repeats=5,
    apply_repeats=3,
    live_rounds=10,
    init_runs=10,
    failover_trials=3,
)
