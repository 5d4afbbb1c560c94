"""New-connection latency, connect to first byte, against the number of mappings, for the three
layouts. A new connection's first packet is the only one that walks the NAT rules (conntrack
remembers the verdict for the rest), so this is where a layout's cost shows.

Per N and per round every layout is loaded in turn (the order rotates from round to round, so a
slow spell of the machine does not always hit the same layout) and one client process in the
client namespace times `connects` fresh connections. The figure reported is the median over the
rounds of each round's median (and p99): the differences are tens of microseconds, about the
size of the machine's own noise.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from . import stats
from .context import PROBES, Bench, BenchError, stop
from .layouts import (
    COUNTING,
    FLOOR,
    LAYOUTS,
    LINEAR,
    PROJECT,
    SERVER_PORT,
    destination_text,
    floor_script,
    linear_script,
    measured_port,
)


@dataclass
class Cell:
    """One layout at one N: each round's median and p99, in microseconds."""

    medians_us: list[float] = field(default_factory=list)
    p99s_us: list[float] = field(default_factory=list)
    samples: int = 0
    errors: int = 0

    def summary(self) -> dict[str, float]:
        low, high = stats.spread(self.medians_us)
        return {
            "median_us": stats.median(self.medians_us),
            "p99_us": stats.median(self.p99s_us),
            "round_median_min_us": low,
            "round_median_max_us": high,
            "samples": self.samples,
            "errors": self.errors,
        }


def run(bench: Bench) -> dict[str, object]:
    options = bench.options
    server = start_server(bench)
    cells: dict[str, dict[int, Cell]] = {layout: {} for layout in LAYOUTS}
    load_seconds: dict[str, dict[int, float]] = {layout: {} for layout in LAYOUTS}
    try:
        for index, n in enumerate(options.mappings):
            files = prepare(bench, n)
            for round_ in range(options.rounds):
                shift = (index + round_) % len(LAYOUTS)
                for layout in LAYOUTS[shift:] + LAYOUTS[:shift]:
                    started = time.perf_counter()
                    load(bench, layout, files)
                    load_seconds[layout][n] = time.perf_counter() - started
                    cell = cells[layout].setdefault(n, Cell())
                    measure(bench, n, cell)
                bench.say(f"latency n={n} round {round_ + 1}/{options.rounds}: " + ", ".join(
                    f"{layout.split()[0]} {cells[layout][n].medians_us[-1]:.1f} us" for layout in LAYOUTS
                ))
    finally:
        bench.clear_tables()
        stop(server)
    return {
        "connects_per_round": options.connects,
        "method": "blocking sockets" if options.blocking else "busy-polling sockets at both ends",
        "rounds": options.rounds,
        "layouts": {
            layout: {str(n): cell.summary() for n, cell in by_n.items()} for layout, by_n in cells.items()
        },
        "last_load_seconds": {layout: {str(n): s for n, s in by_n.items()} for layout, by_n in load_seconds.items()},
    }


def start_server(bench: Bench):  # type: ignore[no-untyped-def]
    mode = "block" if bench.options.blocking else "spin"
    argv = [sys.executable, str(PROBES / "one_byte_server.py"), bench.lan.server, str(SERVER_PORT), "1800", mode]
    return bench.start("ext", argv)


def prepare(bench: Bench, n: int) -> dict[str, str]:
    destinations = bench.file(f"destinations-{n}.txt", destination_text(n, bench.lan))
    return {
        PROJECT: destinations,
        COUNTING: bench.file(f"legacy-{n}.nft", legacy_script(bench, destinations)),
        LINEAR: bench.file(f"linear-{n}.nft", linear_script(n, bench.lan)),
        FLOOR: bench.file(f"floor-{n}.nft", floor_script(n, bench.lan)),
    }


def load(bench: Bench, layout: str, files: dict[str, str]) -> None:
    bench.clear_tables()
    if layout in (PROJECT, COUNTING):
        bench.run_router(bench.destination_env(files[PROJECT]))
    if layout == COUNTING:
        # `legacy` sets up the network as `init` does, and its table counts: the table that
        # `egress-router plan` prints for `legacy`, in place of init's (no daemon runs, so
        # nothing but the table differs).
        bench.clear_tables()
    if layout != PROJECT:
        bench.exec("router", ["nft", "-f", files[layout]], timeout=300)
    if layout == FLOOR:
        bench.route_directly()


def legacy_script(bench: Bench, destinations: str) -> str:
    """The nft part of `egress-router plan` for these mappings in `legacy` mode."""
    from egress_router.cli import render_plan
    from egress_router.config import load_environment

    env = bench.destination_env(destinations)
    env["EGRESS_ROUTER_MODE"] = "legacy"
    env["EGRESS_ROUTER_HTTP_PORT"] = "65535"  # above every mapping's local port (9090 is one at 10,000)
    return render_plan(load_environment(env))


def measure(bench: Bench, n: int, cell: Cell) -> None:
    options = bench.options
    budget = 60.0
    result = bench.probe(
        "client",
        "connect_latency.py",
        [bench.lan.router, str(measured_port(n)), str(options.connects), str(options.warmup), str(budget),
         "block" if options.blocking else "spin"],
        timeout=budget + 30,
    )
    samples = result["samples_ns"]
    cell.errors += result["error_count"]
    if len(samples) < max(1, options.connects // 2):
        raise BenchError(
            f"only {len(samples)} of {options.connects} connections to port {measured_port(n)} "
            f"succeeded: {result['errors']}"
        )
    micro = [s / 1000 for s in samples]
    cell.medians_us.append(stats.median(micro))
    cell.p99s_us.append(stats.percentile(micro, 99))
    cell.samples += len(micro)
