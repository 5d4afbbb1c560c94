"""Apply time against N: the router's `init` from EGRESS_DESTINATION_FILE, end to end (a whole
process: start Python, parse, plan, `nft -f` for the table, one netlink batch for its elements,
the rtnetlink messages for the interface), against `nft -f` of the same
mappings as linear rules; both into an empty namespace, as at a pod's start. A restart is the
same `init` run again where the last one left its table, as a restarted container finds it. Then the time of a
small change to a large live rule set through `Router.reconcile`, which must be element-only.
Also the in-process share: parsing, planning and encoding N lines.
"""

from __future__ import annotations

import json
import time

from . import stats
from .context import ROUTER_TABLE, Bench, BenchError, router_command
from .layouts import (
    FLOOR_TABLE,
    LINEAR_TABLE,
    SERVER_PORT,
    clear_script,
    destination_text,
    linear_script,
)


def run(bench: Bench) -> dict[str, object]:
    options = bench.options
    clear = ["nft", "-f", bench.file("clear-all.nft", clear_script(ROUTER_TABLE, LINEAR_TABLE, FLOOR_TABLE))]
    by_n: dict[str, dict[str, object]] = {}
    for n in options.mappings:
        destinations = bench.file(f"apply-destinations-{n}.txt", destination_text(n, bench.lan))
        linear = bench.file(f"apply-linear-{n}.nft", linear_script(n, bench.lan))
        env = bench.destination_env(destinations)
        env["EGRESS_ROUTER_MODE"] = "init"
        router = bench.timed_runs(router_command(), env, options.apply_repeats, before=clear)
        # A restart: the same `init` again in the pod the last run set up (its table there).
        restart = bench.timed_runs(router_command(), env, options.apply_repeats)
        nft = bench.timed_runs(["nft", "-f", linear], {}, options.apply_repeats, before=clear)
        router_s, nft_s = stats.median(router["seconds"]), stats.median(nft["seconds"])
        restart_s = stats.median(restart["seconds"])
        by_n[str(n)] = {
            "router_init_s": router_s,
            "router_restart_s": restart_s,
            "linear_nft_s": nft_s,
            "ratio": stats.ratio(router_s, nft_s),
            "restart_ratio": stats.ratio(restart_s, nft_s),
            "core": core_times(n, bench),
        }
        bench.say(
            f"apply n={n}: router init {router_s * 1e3:.1f} ms, restart {restart_s * 1e3:.1f} ms, "
            f"nft -f linear {nft_s * 1e3:.1f} ms"
        )
    bench.clear_tables()
    return {"repeats": options.apply_repeats, "by_n": by_n, "live_change": live_change(bench)}


def core_times(n: int, bench: Bench) -> dict[str, float]:
    """Milliseconds this process spends on N lines before the kernel sees them (best of 5:
    the floor, not the noise): parsing, planning, and encoding the map elements as the
    netlink batch a new pod's table is filled with."""
    from egress_router.config import load_environment
    from egress_router.nft.elements import Batch
    from egress_router.nft.table import fill
    from egress_router.plan import build_plan

    env = bench.router_env(EGRESS_DESTINATION=destination_text(n, bench.lan), EGRESS_ROUTER_MODE="init")
    best = {"parse_ms": float("inf"), "plan_ms": float("inf"), "encode_ms": float("inf")}
    for _ in range(5):
        t0 = time.perf_counter()
        config = load_environment(env)
        t1 = time.perf_counter()
        plan = build_plan(config)
        t2 = time.perf_counter()
        table = plan.table
        assert table is not None
        Batch(fill(table)).encode(1)
        t3 = time.perf_counter()
        for key, value in (("parse_ms", t1 - t0), ("plan_ms", t2 - t1), ("encode_ms", t3 - t2)):
            best[key] = min(best[key], value * 1e3)
    return best


def changed_text(n: int, bench: Bench, lines: int) -> str:
    """The same N mappings with the first `lines` of them sent to other remote ports."""
    out = destination_text(n, bench.lan).splitlines(keepends=True)
    for i in range(min(lines, len(out))):
        port = out[i].split()[0]
        out[i] = f"{port} tcp {bench.lan.server} {SERVER_PORT + 1 + i}\n"
    return "".join(out)


def live_change(bench: Bench) -> dict[str, object]:
    options = bench.options
    n, lines = options.live_size, options.live_change
    file_a = bench.file(f"live-{n}-a.txt", destination_text(n, bench.lan))
    file_b = bench.file(f"live-{n}-b.txt", changed_text(n, bench, lines))
    bench.clear_tables()
    env = bench.lab.router_env(bench.router_env(EGRESS_ROUTER_MODE="init"))
    env.pop("EGRESS_DESTINATION", None)
    result = bench.probe(
        "router", "live_change.py", [file_a, file_b, str(options.live_rounds)], timeout=300, input=json.dumps(env)
    )
    steps = result["steps"]
    if not steps:
        raise BenchError("the live change ran no step")
    reconcile = [s["reconcile_s"] for s in steps]
    parse = [s["parse_s"] for s in steps]
    nft = [s["nft_s"] for s in steps]
    total = [s["parse_s"] + s["reconcile_s"] for s in steps]
    summary = {
        "mappings": n,
        "lines_changed": lines,
        "rounds": len(steps),
        "initial_apply_s": result["initial_s"],
        "reconcile_ms": stats.median(reconcile) * 1e3,
        "reconcile_p90_ms": stats.percentile(reconcile, 90) * 1e3,
        "nft_ms": stats.median(nft) * 1e3,
        "parse_ms": stats.median(parse) * 1e3,
        "parse_and_reconcile_ms": stats.median(total) * 1e3,
        "element_only": all(s["element_only"] and not s["full_table"] for s in steps),
        "script_lines": steps[0]["script_lines"],
        "example_script": result["example_script"],
    }
    bench.say(
        f"live change of {lines} lines in {n}: reconcile {summary['reconcile_ms']:.1f} ms "
        f"(kernel write {summary['nft_ms']:.1f} ms), with parsing {summary['parse_and_reconcile_ms']:.1f} ms, "
        f"element-only: {summary['element_only']}"
    )
    return summary
