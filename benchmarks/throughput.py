"""Bulk TCP throughput (iperf3) from the client to a server outside, four ways: through the
router's maps, through the two-rule floor, and through two userspace proxies a user might run
in the router pod instead of NAT (HAProxy in TCP mode, socat). The kernel path should match the
floor: after the first packet conntrack carries the connection whichever rules set it up.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from subprocess import DEVNULL

from . import stats
from .context import Bench, BenchError, stop
from .layouts import two_rule_script

PORT = 5201
ROUTER = "egress-router (maps)"
FLOOR = "floor (two rules)"
HAPROXY = "HAProxy (TCP mode)"
SOCAT = "socat"
PATHS = (ROUTER, FLOOR, HAPROXY, SOCAT)


def haproxy_config(bench: Bench, port: int = PORT) -> str:
    lan = bench.lan
    return (
        "global\n\tmaxconn 256\n"
        "defaults\n\tmode tcp\n\ttimeout connect 5s\n\ttimeout client 60s\n\ttimeout server 60s\n"
        f"frontend bench\n\tbind {lan.router}:{port}\n\tdefault_backend outside\n"
        f"backend outside\n\tsource {lan.source}\n\tserver ext {lan.server}:{port}\n"
    )


def run(bench: Bench) -> dict[str, object]:
    options = bench.options
    lan = bench.lan
    # Sets up the router's addresses and routes once; each path below brings its own NAT.
    bench.run_router(bench.router_env(EGRESS_DESTINATION=f"{PORT} tcp {lan.server}\n"))
    server = bench.lab.popen("ext", ["iperf3", "-s", "-B", lan.server, "-p", str(PORT)], stdout=DEVNULL, stderr=DEVNULL)
    results: dict[str, list[float]] = {path: [] for path in PATHS}
    retransmits: dict[str, list[int]] = {path: [] for path in PATHS}
    try:
        bench.wait_listening("ext", PORT)
        setups: dict[str, Callable[[], object]] = {
            ROUTER: lambda: bench.run_router(bench.router_env(EGRESS_DESTINATION=f"{PORT} tcp {lan.server}\n")),
            FLOOR: lambda: bench.nft(two_rule_script(PORT, PORT, lan), "floor-iperf.nft"),
            HAPROXY: lambda: start_proxy(bench, ["haproxy", "-db", "-f", bench.file("haproxy.cfg", haproxy_config(bench))]),
            SOCAT: lambda: start_proxy(bench, [
                "socat", f"TCP-LISTEN:{PORT},bind={lan.router},reuseaddr,fork",
                f"TCP:{lan.server}:{PORT},bind={lan.source}",
            ]),
        }
        for repeat in range(options.iperf_repeats):
            shift = repeat % len(PATHS)
            for path in PATHS[shift:] + PATHS[:shift]:
                bench.clear_tables()
                if path != ROUTER:  # the floor, and the proxies' own connections: a plain route out
                    bench.route_directly()
                proxy = setups[path]()
                try:
                    gbits, retrans = iperf(bench)
                finally:
                    if proxy is not None and hasattr(proxy, "poll"):
                        stop(proxy)  # type: ignore[arg-type]
                results[path].append(gbits)
                retransmits[path].append(retrans)
            figures = ", ".join(f"{p} {results[p][-1]:.1f} Gbit/s" for p in PATHS)
            bench.say(f"throughput round {repeat + 1}: {figures}")
    finally:
        stop(server)
        bench.clear_tables()
    floor = stats.median(results[FLOOR])
    return {
        "seconds": options.iperf_seconds,
        "repeats": options.iperf_repeats,
        "paths": {
            path: {
                "gbit_s": stats.median(values),
                "runs_gbit_s": values,
                "retransmits": stats.median(retransmits[path]),
                "vs_floor": stats.ratio(stats.median(values), floor),
            }
            for path, values in results.items()
        },
    }


def start_proxy(bench: Bench, argv: list[str]):  # type: ignore[no-untyped-def]
    process = bench.lab.popen("router", argv, stdout=DEVNULL, stderr=DEVNULL)
    try:
        bench.wait_listening("router", PORT)
    except BenchError:
        stop(process)
        raise
    return process


def iperf(bench: Bench) -> tuple[float, int]:
    seconds = bench.options.iperf_seconds
    done = bench.exec(
        "client",
        ["iperf3", "-c", bench.lan.router, "-p", str(PORT), "-t", str(seconds), "-J"],
        timeout=seconds + 30,
    )
    report = json.loads(done.stdout)
    if "error" in report:
        raise BenchError(f"iperf3: {report['error']}")
    end = report["end"]
    return end["sum_received"]["bits_per_second"] / 1e9, int(end["sum_sent"].get("retransmits", 0))
