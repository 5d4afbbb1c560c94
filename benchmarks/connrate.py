"""New connections per second (wrk, `Connection: close`, against nginx in ext), four ways:
through the router (its maps, the mark and the policy routing), through the two-rule floor
(a plain route, no mark), through the floor's rules with the router's mark (so by its policy
routing), and through HAProxy in the router pod. Each request is a fresh TCP connection, so
every one pays the NAT lookup and the routing decision of its first packet: the part of the
router's cost that bulk throughput hides.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from subprocess import DEVNULL

from . import stats
from .context import Bench, BenchError, stop
from .layouts import marked_script, two_rule_script
from .throughput import haproxy_config

ROUTER = "egress-router (maps, mark, policy routing)"
FLOOR = "floor (two rules, plain route)"
MARKED = "floor + mark (two rules, policy routing)"
HAPROXY = "HAProxy (TCP mode)"
PATHS = (ROUTER, FLOOR, MARKED, HAPROXY)
# A port of its own per path, the same on the router and on nginx. nginx closes first, so it
# holds each connection's tuple in TIME_WAIT for a minute. With one port for all, the NAT paths
# ran at a third to a half of their rate right after HAProxy's run (whose connections to nginx
# come from the same address, with other sequence numbers and timestamps, and take the same
# tuples), whichever NAT path it was: the figures measured the order of the paths.
PORTS = {ROUTER: 8000, FLOOR: 8001, MARKED: 8002, HAPROXY: 8003}
THREADS = 1  # two vCPUs: one for wrk, one left for nginx and the kernel's forwarding
# Tens of thousands of connections a run. The client namespace is the lab's own to tune, and
# set as a busy client would be: more ports than the default 28,000, so that a port comes back
# less often to a tuple still in TIME_WAIT somewhere; and the reuse of its own TIME_WAIT ports
# (safe with timestamps), without which it runs out of ports behind HAProxy (which lets wrk
# close first) after some 150,000 connections and that path's rate falls to a few hundred.
CLIENT_SYSCTLS = {"net.ipv4.ip_local_port_range": "1024 65000", "net.ipv4.tcp_tw_reuse": "1"}


@dataclass(frozen=True)
class Run:
    """What one wrk run reported."""

    per_second: float
    requests: int
    errors: int  # socket errors of any kind (connect, read, write, timeout)
    bad_status: int  # responses other than 2xx and 3xx


def nginx_config(folder: Path, address: str, ports: list[int]) -> str:
    """A foreground nginx with one worker that answers every request with three bytes; every
    path it writes is in `folder`, so it touches nothing of the host's nginx."""
    temp = "".join(f"\t{kind}_temp_path {folder / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (
        "daemon off;\nmaster_process on;\nworker_processes 1;\n"
        f"pid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'} warn;\n"
        "events {\n\tworker_connections 1024;\n}\n"
        "http {\n\taccess_log off;\n\tdefault_type text/plain;\n"
        f"{temp}"
        "\tserver {\n" + "".join(f"\t\tlisten {address}:{port} backlog=1024;\n" for port in ports) +
        '\t\tlocation / {\n\t\t\treturn 200 "ok\\n";\n\t\t}\n\t}\n}\n'
    )


def parse_wrk(text: str) -> Run:
    """wrk's plain-text summary -> a Run; a summary without a rate is an error."""
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    total = re.search(r"^\s*(\d+) requests in", text, re.M)
    if rate is None or total is None:
        raise BenchError(f"wrk printed no rate: {text.strip()[-400:]}")
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return Run(
        per_second=float(rate.group(1)),
        requests=int(total.group(1)),
        errors=sum(int(n) for n in socket.groups()) if socket else 0,
        bad_status=int(bad.group(1)) if bad else 0,
    )


def run(bench: Bench) -> dict[str, object]:
    before = {key: " ".join(bench.exec("client", ["sysctl", "-n", key]).stdout.split()) for key in CLIENT_SYSCTLS}
    for key, value in CLIENT_SYSCTLS.items():
        bench.exec("client", ["sysctl", "-qw", f"{key}={value}"])
    try:
        nginx = start_nginx(bench)
        try:
            runs = measure(bench)
        finally:
            stop(nginx)
            bench.clear_tables()
            forget_connections(bench)
    finally:
        for key, value in before.items():
            bench.exec("client", ["sysctl", "-qw", f"{key}={value}"])
    return summary(bench, runs, bench.lan.server)


def forget_connections(bench: Bench) -> None:
    """Empty the router namespace's conntrack table: the section leaves some 100,000 entries
    there (TIME_WAIT for two minutes), and every later `init` that creates or deletes a NAT
    table walks them all (the seed's `init` took 100-160 ms after this section, 40 ms without)."""
    result = bench.probe("router", "flush_conntrack.py", [])
    bench.say(f"connrate: forgot {result['before']:,} conntrack entries in the router namespace")


def measure(bench: Bench) -> dict[str, list[Run]]:
    """`connrate_repeats` rounds of one wrk run per path, the order rotating from round to
    round so that a slow spell of the shared machine does not always hit the same path."""
    runs: dict[str, list[Run]] = {path: [] for path in PATHS}
    setups: dict[str, Callable[[], subprocess.Popen[str] | None]] = {
        ROUTER: lambda: route_by_router(bench),
        FLOOR: lambda: floor(bench),
        MARKED: lambda: marked(bench),
        HAPROXY: lambda: haproxy(bench),
    }
    for repeat in range(bench.options.connrate_repeats):
        shift = repeat % len(PATHS)
        for path in PATHS[shift:] + PATHS[:shift]:
            bench.clear_tables()
            proxy = setups[path]()
            try:
                runs[path].append(wrk(bench, PORTS[path]))
            finally:
                if proxy is not None:
                    stop(proxy)
        bench.say(f"connrate round {repeat + 1}: " + ", ".join(
            f"{path.split(' (')[0]} {runs[path][-1].per_second:,.0f}/s" for path in PATHS
        ))
    return runs


def summary(bench: Bench, runs: dict[str, list[Run]], server: str) -> dict[str, object]:
    floor_rate = stats.median([r.per_second for r in runs[FLOOR]])
    floor_runs = [r.per_second for r in runs[FLOOR]]
    return {
        "seconds": bench.options.connrate_seconds,
        "repeats": bench.options.connrate_repeats,
        "connections": bench.options.connrate_connections,
        "threads": THREADS,
        "server": f"nginx on {server}, ports {', '.join(str(p) for p in PORTS.values())}",
        "paths": {
            path: {
                "per_second": stats.median([r.per_second for r in done]),
                "runs_per_second": [r.per_second for r in done],
                "requests": sum(r.requests for r in done),
                "errors": sum(r.errors for r in done),
                "bad_status": sum(r.bad_status for r in done),
                "vs_floor": stats.ratio(stats.median([r.per_second for r in done]), floor_rate),
                # Each round's ratio to the floor's run of the same round, their median: the
                # runs of a round are seconds apart, so a slow spell weighs on both sides.
                "vs_floor_paired": stats.median(
                    [stats.ratio(r.per_second, f) for r, f in zip(done, floor_runs, strict=True)]
                ),
            }
            for path, done in runs.items()
        },
    }


def start_nginx(bench: Bench) -> subprocess.Popen[str]:
    folder = bench.workdir / "nginx"
    folder.mkdir(exist_ok=True)
    config = bench.file("nginx.conf", nginx_config(folder, bench.lan.server, list(PORTS.values())))
    # lab.popen gives it a session of its own: stopping it stops the worker it forks too.
    argv = ["nginx", "-p", str(folder), "-e", str(folder / "error.log"), "-c", config]
    process: subprocess.Popen[str] = bench.lab.popen("ext", argv, stdout=DEVNULL, stderr=DEVNULL)
    try:
        for port in PORTS.values():
            bench.wait_listening("ext", port)
    except BenchError:
        stop(process)
        log = folder / "error.log"
        raise BenchError(f"nginx did not start: {log.read_text().strip()[-400:] if log.exists() else 'no log'}") from None
    return process


def route_by_router(bench: Bench) -> None:
    bench.run_router(bench.router_env(EGRESS_DESTINATION=f"{PORTS[ROUTER]} tcp {bench.lan.server}\n"))


def floor(bench: Bench) -> None:
    bench.nft(two_rule_script(PORTS[FLOOR], PORTS[FLOOR], bench.lan), "floor-connrate.nft")
    bench.route_directly()


def marked(bench: Bench) -> None:
    bench.nft(marked_script(PORTS[MARKED], PORTS[MARKED], bench.lan), "marked-connrate.nft")


def haproxy(bench: Bench) -> subprocess.Popen[str]:
    bench.route_directly()  # HAProxy's own connections to the server: the plain route out
    config = bench.file("haproxy-connrate.cfg", haproxy_config(bench, PORTS[HAPROXY]))
    argv = ["haproxy", "-db", "-f", config]
    process: subprocess.Popen[str] = bench.lab.popen("router", argv, stdout=DEVNULL, stderr=DEVNULL)
    try:
        bench.wait_listening("router", PORTS[HAPROXY])
    except BenchError:
        stop(process)
        raise
    return process


def wrk(bench: Bench, port: int) -> Run:
    options = bench.options
    done = bench.exec(
        "client",
        ["wrk", f"-t{THREADS}", f"-c{options.connrate_connections}", f"-d{options.connrate_seconds}s",
         "--timeout", "2s", "-H", "Connection: close", f"http://{bench.lan.router}:{port}/"],
        timeout=options.connrate_seconds + 30,
    )
    result = parse_wrk(done.stdout)
    if result.requests == 0 or result.errors + result.bad_status > result.requests // 100:
        raise BenchError(
            f"wrk: {result.requests} requests, {result.errors} socket errors, "
            f"{result.bad_status} bad responses through port {port}: {done.stdout.strip()[-400:]}"
        )
    check_source(bench)
    return result


def check_source(bench: Bench) -> None:
    """nginx closes first, so each connection it served waits in TIME_WAIT there under the
    address it came from: every one must be the reserved source address, whichever path."""
    lan = bench.lan
    done = bench.exec("ext", ["ss", "-Htn", "state", "time-wait", "src", lan.server, "and", "not", "dst", lan.source])
    if done.stdout.strip():
        stray = done.stdout.strip().splitlines()
        raise BenchError(f"{len(stray)} connections reached nginx from elsewhere than {lan.source}: {stray[0]}")
