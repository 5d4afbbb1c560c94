"""What every pod start pays: `init` wall time for the seed's example (whole processes, spawned
inside the router namespace), the interpreter's own start-up for scale, the heaviest imports on
that path (`python -X importtime`), the resident memory of the long-running `legacy` mode, and
the time to read and check a 10,000-line destination file (in this process).
"""

from __future__ import annotations

import os
import sys
import time

from . import stats
from .context import Bench, BenchError, router_command, stop

TOP_IMPORTS = 10
PARSE_LINES = 10000
PARSE_RUNS = 20
NEW_POD = [
    "sh",
    "-c",
    (
        "nft delete table inet egress_router 2>/dev/null; "
        "ip address flush dev macvlan0 && ip link set macvlan0 down"
    ),
]


def run(bench: Bench) -> dict[str, object]:
    options = bench.options
    env = bench.router_env(EGRESS_ROUTER_MODE="init")
    argv = router_command()
    # A pod start: the router namespace as a new pod has it (no table, macvlan0 down and
    # without address), put back before each timed run.
    init = bench.timed_runs(argv, env, options.init_runs, before=NEW_POD)["seconds"]
    # A restart in the same pod (the init container run again): the table is there, read back
    # over netlink, and only the difference (none) is written.
    rerun = bench.timed_runs(argv, env, options.init_runs)["seconds"]
    interpreter = bench.timed_runs([sys.executable, "-c", "pass"], env, options.init_runs)["seconds"]
    # The same command under `-X importtime` (a script is run by the interpreter directly).
    traced = [sys.executable, "-X", "importtime", *(argv if len(argv) == 1 else argv[1:])]
    importtime = bench.timed_runs(traced, env, 1)["stderr"]
    summary: dict[str, object] = {
        "runs": options.init_runs,
        "init_median_ms": stats.median(init) * 1e3,
        "init_p90_ms": stats.percentile(init, 90) * 1e3,
        "init_min_ms": min(init) * 1e3,
        "rerun_median_ms": stats.median(rerun) * 1e3,
        "python_floor_median_ms": stats.median(interpreter) * 1e3,
        "imports": top_imports(importtime),
        "legacy": legacy_memory(bench),
        "parse": parse_times(bench),
    }
    bench.say(
        f"init (seed) median {summary['init_median_ms']:.1f} ms (python -c pass "
        f"{summary['python_floor_median_ms']:.1f} ms); legacy RSS {summary['legacy']['rss_mb']:.1f} MB"  # type: ignore[index]
    )
    return summary


def parse_times(bench: Bench) -> dict[str, float]:
    """`load_environment` of a 10,000-line EGRESS_DESTINATION_FILE: reading the file, parsing
    and checking every rule, as a pod start does, with the address cache emptied each time (a
    new process starts with none). Median and fastest of `PARSE_RUNS`."""
    from egress_router.config import load_environment, parse_address

    from .layouts import destination_text

    path = bench.file(f"parse-{PARSE_LINES}.txt", destination_text(PARSE_LINES, bench.lan))
    env = bench.destination_env(path)
    times = []
    for _ in range(PARSE_RUNS):
        parse_address.cache_clear()
        started = time.perf_counter()
        config = load_environment(env)
        times.append(time.perf_counter() - started)
        if len(config.destinations.mappings) != PARSE_LINES:
            raise BenchError(f"{path} gave {len(config.destinations.mappings)} rules, not {PARSE_LINES}")
    return {"lines": PARSE_LINES, "runs": PARSE_RUNS, "median_ms": stats.median(times) * 1e3, "min_ms": min(times) * 1e3}


def top_imports(stderr: str) -> dict[str, object]:
    """`-X importtime` lines -> the total, the slowest modules by their own time, and the
    project's modules by cumulative time."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        fields = line[len("import time:"):].split("|", 2)
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue
        # One space after the bar, then two more per level of nesting.
        rows.append((fields[2][1:].rstrip(), int(fields[0]), int(fields[1])))
    top_level = [r for r in rows if not r[0].startswith(" ")]
    return {
        "total_ms": sum(r[2] for r in top_level) / 1e3,
        "modules": len(rows),
        "by_self_ms": [(name.strip(), s / 1e3) for name, s, _ in sorted(rows, key=lambda r: -r[1])[:TOP_IMPORTS]],
        "project_cumulative_ms": [
            (name.strip(), c / 1e3) for name, _, c in sorted(rows, key=lambda r: -r[2])
            if name.strip().startswith("egress_router")
        ][:TOP_IMPORTS],
    }


def legacy_memory(bench: Bench) -> dict[str, float]:
    """Start `legacy` mode, wait until its table is in, and read VmRSS and VmHWM from /proc;
    then stop it with SIGTERM and time how long it takes to leave."""
    bench.clear_tables()
    process = bench.lab.start_router(bench.router_env(EGRESS_ROUTER_MODE="legacy"))
    try:
        deadline = time.monotonic() + 10
        while bench.lab.nft_table() is None:
            if process.poll() is not None or time.monotonic() > deadline:
                err = process.stderr.read() if process.stderr and process.poll() is not None else ""
                raise BenchError(f"legacy mode did not come up: {err.strip()[-600:] or 'no table after 10s'}")
            time.sleep(0.05)
        # Past its start-up and its repeated announcements (1 s and 2 s after start): what it
        # holds for the rest of its life.
        time.sleep(2.5)
        status = read_status(python_pid(process.pid))
        started = time.perf_counter()
        stop(process, grace=5)
        stopped = time.perf_counter() - started
    finally:
        stop(process)
    return {"rss_mb": status["VmRSS"] / 1024, "hwm_mb": status["VmHWM"] / 1024, "sigterm_exit_s": stopped}


def python_pid(pid: int) -> int:
    """`ip netns exec` execs its command, so the pid is the router's own; check it, though."""
    exe = os.readlink(f"/proc/{pid}/exe")
    if "python" not in os.path.basename(exe):
        raise BenchError(f"process {pid} is {exe}, not the router's Python")
    return pid


def read_status(pid: int) -> dict[str, int]:
    values = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])  # kB
    return values
