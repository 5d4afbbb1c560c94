"""Results -> the issue's targets, a markdown report and the latency plot."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from . import connrate as cr
from .layouts import COUNTING, FLOOR, LAYOUTS, LINEAR, PROJECT
from .stats import ratio
from .throughput import FLOOR as TP_FLOOR
from .throughput import ROUTER as TP_ROUTER

LATENCY_PLOT = "latency.png"
APPLY_PLOT = "apply.png"
FAILOVER_PLOT = "failover.png"


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def reference_n(results: dict[str, Any]) -> int:
    """10,000 mappings when measured (the issue's figure), else the largest N measured."""
    latency = results.get("latency") or {}
    apply = results.get("apply") or {}
    ns = [int(n) for n in latency.get("layouts", {}).get(PROJECT, {})] or [int(n) for n in apply.get("by_n", {})]
    return 10000 if 10000 in ns else max(ns, default=0)


def targets(results: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(target, measured, limit, met) for each of the issue's "done when" lines measured."""
    out: list[tuple[str, str, str, bool | None]] = []
    big = reference_n(results)
    latency = results.get("latency")
    if latency:
        cells = latency["layouts"]
        ours_1 = cells[PROJECT].get("1", {}).get("median_us")
        floor_1 = cells[FLOOR].get("1", {}).get("median_us")
        ours_big = cells[PROJECT].get(str(big), {}).get("median_us")
        linear_big = cells[LINEAR].get(str(big), {}).get("median_us")
        if ours_1 and floor_1:
            # Only the router's side pays the mark and the policy routing: this is their cost.
            r = ratio(ours_1, floor_1)
            figure = f"{r:.2f}x ({ours_1:.1f} / {floor_1:.1f} us)"
            out.append(("latency, 1 mapping (maps) / floor", figure, "<= 1.1x", r <= 1.1))
        counting_1 = cells.get(COUNTING, {}).get("1", {}).get("median_us")
        if counting_1 and floor_1:
            # `legacy` mode's table: the same, plus the per-port counting its metrics read.
            r = ratio(counting_1, floor_1)
            figure = f"{r:.2f}x ({counting_1:.1f} / {floor_1:.1f} us)"
            out.append(("latency, 1 mapping, legacy's counting table / floor", figure, "none (reported)", None))
        linear_1 = cells[LINEAR].get("1", {}).get("median_us")
        if linear_1 and floor_1:
            # One linear rule is the floor's DNAT plus the router's mark, out by its policy
            # routing: the mark's cost alone, without the rest of the router's table.
            r = ratio(linear_1, floor_1)
            figure = f"{r:.2f}x ({linear_1:.1f} / {floor_1:.1f} us)"
            out.append(("latency, 1 mapping, one rule + mark / floor", figure, "none (reported)", None))
        if ours_1 and ours_big:
            r = ratio(ours_big, ours_1)
            figure = f"{r:.2f}x ({ours_big:.1f} / {ours_1:.1f} us)"
            out.append((f"latency, {big:,} mappings / 1 mapping (maps)", figure, "<= 1.3x", r <= 1.3))
        if ours_big and linear_big:
            r = ratio(linear_big, ours_big)
            out.append((f"latency, linear / maps at {big:,}", f"{r:.2f}x ({linear_big:.1f} / {ours_big:.1f} us)", ">= 3x", r >= 3))
    apply = results.get("apply")
    if apply and str(big) in apply["by_n"]:
        row = apply["by_n"][str(big)]
        out.append((
            f"init with {big:,} mappings / nft -f of {big:,} linear rules",
            f"{row['ratio']:.2f}x ({row['router_init_s'] * 1e3:.0f} / {row['linear_nft_s'] * 1e3:.0f} ms)",
            "<= 0.6x", row["ratio"] <= 0.6,
        ))
        if "restart_ratio" in row:
            out.append((
                f"restart with {big:,} mappings (table there) / nft -f of {big:,} linear rules",
                f"{row['restart_ratio']:.2f}x ({row['router_restart_s'] * 1e3:.0f} / {row['linear_nft_s'] * 1e3:.0f} ms)",
                "<= 0.6x", row["restart_ratio"] <= 0.6,
            ))
    throughput = results.get("throughput")
    if throughput:
        paths = throughput["paths"]
        r = paths[TP_ROUTER]["vs_floor"]
        figure = f"{r:.2f}x ({paths[TP_ROUTER]['gbit_s']:.1f} / {paths[TP_FLOOR]['gbit_s']:.1f} Gbit/s)"
        out.append(("throughput / floor", figure, ">= 0.9x", r >= 0.9))
    out += _connrate_targets(results.get("connrate"))
    if apply:
        live = apply["live_change"]
        ok = live["reconcile_ms"] <= 20 and live["element_only"]
        out.append((
            f"{live['lines_changed']}-line change to a live {live['mappings']:,}-mapping table",
            f"{live['reconcile_ms']:.1f} ms reconcile (kernel write {live['nft_ms']:.1f} ms), element-only: {live['element_only']}",
            "<= 20 ms", ok,
        ))
    startup = results.get("startup")
    if startup:
        m = startup["init_median_ms"]
        out.append(("init, seed example, new pod (median)", f"{m:.1f} ms", "<= 50 ms", m <= 50))
        rss = startup["legacy"]["rss_mb"]
        out.append(("legacy mode resident memory", f"{rss:.1f} MB", "<= 40 MB", rss <= 40))
        parse = startup.get("parse")
        if parse:
            p = parse["median_ms"]
            out.append((f"read and parse {parse['lines']:,} lines (median)", f"{p:.1f} ms", "<= 20 ms", p <= 20))
    return out


def _connrate_targets(connrate: dict[str, Any] | None) -> list[tuple[str, str, str, bool | None]]:
    """Reported without a limit: see docs/performance.md for why."""
    if not connrate:
        return []
    paths = connrate["paths"]
    floor = paths[cr.FLOOR]["per_second"]
    out: list[tuple[str, str, str, bool | None]] = []
    for path, name in ((cr.ROUTER, "router"), (cr.MARKED, "floor + mark"), (cr.HAPROXY, "HAProxy")):
        p = paths[path]
        figure = f"{p['vs_floor']:.2f}x ({p['per_second']:,.0f} / {floor:,.0f} per s)"
        out.append((f"new connections per second, {name} / floor", figure, "none (reported)", None))
    return out


def _met(ok: bool | None) -> str:
    return "–" if ok is None else "yes" if ok else "NO"


def markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    lines = ["# egress-router benchmark results", ""]
    lines += [f"Run {results['started']} in {results['seconds']:.0f} s: `{results['command']}`", ""]
    lines += ["| machine | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in results["machine"].items()] + [""]
    rows = targets(results)
    if rows:
        lines += ["## Targets (issues 3 and 10)", "", "| target | measured | limit | met |", "|---|---|---|---|"]
        lines += [f"| {t} | {m} | {lim} | {_met(ok)} |" for t, m, lim, ok in rows] + [""]
    lines += _latency(results.get("latency"), plots)
    lines += _names(results.get("names"))
    lines += _throughput(results.get("throughput"))
    lines += _connrate(results.get("connrate"))
    lines += _apply(results.get("apply"), plots)
    lines += _startup(results.get("startup"))
    lines += _failover(results.get("failover"), plots)
    return "\n".join(lines) + "\n"


def _latency(latency: dict[str, Any] | None, plots: dict[str, str]) -> list[str]:
    if not latency:
        return []
    cells = latency["layouts"]
    ns = sorted({int(n) for by_n in cells.values() for n in by_n})
    out = [
        "## New-connection latency (connect to first byte)", "",
        (f"Median over {latency['rounds']} rounds of each round's median and p99, "
        f"{latency['connects_per_round']} connections per round and layout; microseconds. "
        "The measured mapping is the last of N. \"spread\" is the lowest and highest round median."), "",
        "| mappings | " + " | ".join(f"{short(layout)} median | p99" for layout in LAYOUTS)
        + " | linear / maps | maps / floor |",
        "|---:|" + "---:|---:|" * len(LAYOUTS) + "---:|---:|",
    ]
    for n in ns:
        row = [f"{n:,}"]
        for layout in LAYOUTS:
            c = cells[layout].get(str(n), {})
            spread = f" ({_fmt(c.get('round_median_min_us'))}–{_fmt(c.get('round_median_max_us'))})"
            row += [_fmt(c.get("median_us")) + spread, _fmt(c.get("p99_us"))]
        med = {layout: cells[layout].get(str(n), {}).get("median_us", math.nan) for layout in LAYOUTS}
        row += [_fmt(ratio(med[LINEAR], med[PROJECT]), 2) + "x", _fmt(ratio(med[PROJECT], med[FLOOR]), 2) + "x"]
        out.append("| " + " | ".join(row) + " |")
    if LATENCY_PLOT in plots:
        out += ["", f"![latency against mappings]({plots[LATENCY_PLOT]})"]
    return out + [""]


def _names(names: dict[str, Any] | None) -> list[str]:
    if not names:
        return []
    out = [
        "## A named rule next to a literal one (connect to first byte)", "",
        (f"Median over {names['rounds']} rounds of each round's median, {names['connects_per_round']} "
         "connections per round; microseconds. The measured mapping is the last of N, a literal "
         "address or a name (verdict map, the name's chain, numgen)."), "",
        "| mappings | literal median | p99 | named median | p99 | named / literal |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n, row in sorted(names["by_n"].items(), key=lambda kv: int(kv[0])):
        lit, nam = row["literal"], row["named"]
        out.append(
            f"| {int(n):,} | {_fmt(lit['median_us'])} | {_fmt(lit['p99_us'])} | {_fmt(nam['median_us'])} | "
            f"{_fmt(nam['p99_us'])} | {_fmt(row['named_over_literal'], 3)}x |"
        )
    return out + [""]


def short(layout: str) -> str:
    return layout.split(" (")[0]


def _throughput(throughput: dict[str, Any] | None) -> list[str]:
    if not throughput:
        return []
    out = [
        "## Bulk throughput (iperf3, one TCP stream, client -> ext)", "",
        f"Median of {throughput['repeats']} runs of {throughput['seconds']} s each.", "",
        "| path | Gbit/s | runs | vs floor | retransmits |", "|---|---:|---|---:|---:|",
    ]
    for path, p in throughput["paths"].items():
        runs = ", ".join(f"{v:.1f}" for v in p["runs_gbit_s"])
        out.append(f"| {path} | {p['gbit_s']:.2f} | {runs} | {p['vs_floor']:.2f}x | {_fmt(p['retransmits'], 0)} |")
    return out + [""]


def _connrate(connrate: dict[str, Any] | None) -> list[str]:
    if not connrate:
        return []
    out = [
        "## New connections per second (wrk, `Connection: close`, client -> nginx in ext)", "",
        (f"Median of {connrate['repeats']} runs of {connrate['seconds']} s each, {connrate['connections']} "
         f"concurrent connections, {connrate['threads']} wrk thread; every request a new TCP connection."), "",
        ("\"vs floor\" is the ratio of the medians; \"paired\" the median of each round's ratio to "
         "the floor's run of the same round."), "",
        "| path | connections/s | runs | vs floor | paired | requests | errors |", "|---|---:|---|---:|---:|---:|---:|",
    ]
    for path, p in connrate["paths"].items():
        runs = ", ".join(f"{v:,.0f}" for v in p["runs_per_second"])
        out.append(
            f"| {path} | {p['per_second']:,.0f} | {runs} | {p['vs_floor']:.2f}x | {p['vs_floor_paired']:.2f}x | {p['requests']:,} "
            f"| {p['errors'] + p['bad_status']} |"
        )
    return out + [""]


def _apply(apply: dict[str, Any] | None, plots: dict[str, str]) -> list[str]:
    if not apply:
        return []
    out = [
        "## Apply time against N", "",
        (f"Whole processes into an empty namespace, median of {apply['repeats']}: the router's `init` "
        "with EGRESS_DESTINATION_FILE (Python start, parse, plan, `nft -f` for the table with empty "
        "maps, one netlink batch for the map elements, the interface over rtnetlink) and `nft -f` of the same "
        "mappings as linear rules; a restart is the same `init` again on the table the last run left. "
        "The last three columns are the in-process share (best of 5): "
        "parsing, planning, encoding the elements."), "",
        "| mappings | router init (ms) | restart (ms) | nft -f linear (ms) | ratio | restart ratio "
        "| parse (ms) | plan (ms) | encode (ms) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, row in sorted(apply["by_n"].items(), key=lambda kv: int(kv[0])):
        core = row["core"]
        out.append(
            f"| {int(n):,} | {row['router_init_s'] * 1e3:.1f} | {row['router_restart_s'] * 1e3:.1f} "
            f"| {row['linear_nft_s'] * 1e3:.1f} | {row['ratio']:.2f}x | {row['restart_ratio']:.2f}x "
            f"| {core['parse_ms']:.2f} | {core['plan_ms']:.2f} | {core['encode_ms']:.2f} |"
        )
    if APPLY_PLOT in plots:
        out += ["", f"![apply time against mappings]({plots[APPLY_PLOT]})"]
    live = apply["live_change"]
    out += [
        "", f"### A {live['lines_changed']}-line change to a live {live['mappings']:,}-mapping table", "",
        (f"`Router.reconcile` with the real adapters (NftCli, RtNetlink) in the router namespace, "
        f"{live['rounds']} changes back and forth, medians:"), "",
        "| step | ms |", "|---|---:|",
        "| reconcile (plan, diff, one netlink batch of element changes) | "
        f"{live['reconcile_ms']:.1f} (p90 {live['reconcile_p90_ms']:.1f}) |",
        f"| of which the kernel write (`NftCli.apply`) | {live['nft_ms']:.1f} |",
        f"| reading and parsing the {live['mappings']:,}-line file | {live['parse_ms']:.1f} |",
        f"| file to kernel (both) | {live['parse_and_reconcile_ms']:.1f} |",
        f"| first apply of the whole table (for scale) | {live['initial_apply_s'] * 1e3:.1f} |",
        "", f"Element-only transactions: {live['element_only']} ({live['script_lines']} lines), e.g.:", "",
        "```", live["example_script"].rstrip(), "```",
    ]
    return out + [""]


def _startup(startup: dict[str, Any] | None) -> list[str]:
    if not startup:
        return []
    imports = startup["imports"]
    legacy = startup["legacy"]
    out = [
        "## Start-up and memory", "",
        (f"`init` for the seed's example, {startup['runs']} whole processes spawned in the router "
        f"namespace, each on the namespace as a new pod has it: median {startup['init_median_ms']:.1f} ms, "
        f"p90 {startup['init_p90_ms']:.1f} ms, fastest {startup['init_min_ms']:.1f} ms. Run again in "
        f"the same pod (a restart: the table there is read back and only a difference written): "
        f"median {startup['rerun_median_ms']:.1f} ms. "
        f"`python -c pass` alone takes {startup['python_floor_median_ms']:.1f} ms."), "",
        (f"`python -X importtime` of the same command: {imports['modules']} modules, "
        f"{imports['total_ms']:.1f} ms of imports in all. Slowest by their own time:"), "",
        "| module | self (ms) |", "|---|---:|",
    ]
    out += [f"| {name} | {ms:.2f} |" for name, ms in imports["by_self_ms"]]
    out += ["", "The project's modules, cumulative:", "", "| module | cumulative (ms) |", "|---|---:|"]
    out += [f"| {name} | {ms:.2f} |" for name, ms in imports["project_cumulative_ms"]]
    out += [
        "", (f"`legacy` mode after start: VmRSS {legacy['rss_mb']:.1f} MB (peak {legacy['hwm_mb']:.1f} MB); "
        f"it left {legacy['sigterm_exit_s'] * 1e3:.0f} ms after SIGTERM."),
    ]
    parse = startup.get("parse")
    if parse:
        out += ["", (f"Reading and checking a {parse['lines']:,}-line destination file (`load_environment`, "
                     f"cold address cache), {parse['runs']} runs: median {parse['median_ms']:.1f} ms, "
                     f"fastest {parse['min_ms']:.1f} ms.")]
    return out + [""]


def _failover(failover: dict[str, Any] | None, plots: dict[str, str]) -> list[str]:
    if not failover:
        return []
    out = [
        "## Failover (HA)", "",
        (f"{failover['trials']} trials of each kind, interleaved, each in a fresh two-node HA lab: "
         "the time from the active's failure until a new connection through the survivor reaches "
         "the outside server from the reserved address (benchmarks/failover.py)."), "",
        "| failure | median (s) | max (s) | min (s) |", "|---|---:|---:|---:|",
    ]
    for kind, cell in failover["kinds"].items():
        out.append(f"| {kind} | {cell['median_s']:.3f} | {cell['max_s']:.3f} | {cell['min_s']:.3f} |")
    for kind, cell in failover["kinds"].items():
        quiet = cell.get("arp_quiet")
        if quiet:
            out += ["", (f"After a {kind}, the dead pod stopped answering ARP for the address after "
                         f"median {quiet['median_s']:.3f} s, max {quiet['max_s']:.3f} s.")]
    if FAILOVER_PLOT in plots:
        out += ["", f"![failover]({FAILOVER_PLOT})"]
    return out + [""]


def plot(results: dict[str, Any], folder: Path) -> dict[str, str]:
    """Write the PNGs; matplotlib is imported here only, so the rest runs without it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: dict[str, str] = {}
    machine = results["machine"]
    subtitle = f"{machine['cpu']}, {machine['cores']} cores, Linux {machine['kernel']}, {machine['nft']}"
    latency = results.get("latency")
    if latency:
        fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
        styles = {PROJECT: ("tab:blue", "o"), COUNTING: ("tab:green", "D"), LINEAR: ("tab:red", "s"), FLOOR: ("tab:gray", "^")}
        for layout in LAYOUTS:
            cells = latency["layouts"][layout]
            ns = sorted(int(n) for n in cells)
            med = [cells[str(n)]["median_us"] for n in ns]
            low = [cells[str(n)]["round_median_min_us"] for n in ns]
            high = [cells[str(n)]["round_median_max_us"] for n in ns]
            p99 = [cells[str(n)]["p99_us"] for n in ns]
            color, marker = styles[layout]
            ax.plot(ns, med, color=color, marker=marker, label=f"{layout}, median")
            ax.fill_between(ns, low, high, color=color, alpha=0.15, linewidth=0)
            ax.plot(ns, p99, color=color, linestyle=":", linewidth=1, label=f"{short(layout)}, p99")
        # Log y too: the linear layout's p99 is milliseconds where the medians are tens of µs.
        ax.legend(fontsize=8, loc="upper left", ncol=2)
        _finish(plt, fig, ax, "mappings (the measured one last)", "connect to first byte (µs, log scale)",
                f"New-connection latency through the router\n{subtitle}", folder / LATENCY_PLOT)
        written[LATENCY_PLOT] = LATENCY_PLOT
    apply = results.get("apply")
    if apply:
        fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
        rows = sorted(apply["by_n"].items(), key=lambda kv: int(kv[0]))
        ns = [int(n) for n, _ in rows]
        ax.plot(ns, [r["router_init_s"] * 1e3 for _, r in rows], "o-", color="tab:blue", label="egress-router init (whole process)")
        ax.plot(ns, [r["linear_nft_s"] * 1e3 for _, r in rows], "s-", color="tab:red", label="nft -f, one rule per mapping")
        ax.legend(fontsize=8)
        _finish(plt, fig, ax, "mappings", "wall time (ms)",
                f"Apply time into an empty namespace\n{subtitle}", folder / APPLY_PLOT)
        written[APPLY_PLOT] = APPLY_PLOT
    failover = results.get("failover")
    if failover:
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
        kinds = list(failover["kinds"])
        for i, kind in enumerate(kinds):
            values = [v * 1e3 for v in failover["kinds"][kind]["egress_s"]]
            ax.scatter([i] * len(values), values, color="tab:blue", alpha=0.6, s=18)
            ax.hlines(statistics.median(values), i - 0.25, i + 0.25, color="tab:red")
        ax.set_xticks(range(len(kinds)), kinds)
        ax.set_ylabel("to a new connection from the reserved address (ms)")
        ax.set_ylim(bottom=0)
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_title(f"HA failover, {failover['trials']} trials per kind (red: median)\n{subtitle}", fontsize=9)
        fig.tight_layout()
        fig.savefig(folder / FAILOVER_PLOT)
        plt.close(fig)
        written[FAILOVER_PLOT] = FAILOVER_PLOT
    return written


def _finish(plt: Any, fig: Any, ax: Any, xlabel: str, ylabel: str, title: str, path: Path) -> None:
    """What both plots share: log-log axes, labels, a grid, the title; then write and close."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
