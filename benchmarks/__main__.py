"""`python -m benchmarks [--quick] [--out DIR] [--mappings 1,100] [--only latency,apply] ...`"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import machine, report
from .context import Bench, BenchError
from .layouts import MAX_MAPPINGS, Lan
from .options import FULL, QUICK, SECTIONS, Options


def parse_args(argv: list[str]) -> tuple[Options, Path]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer mappings, connections and runs (about 2 minutes)")
    parser.add_argument("--out", default="results", help="results folder (default: results/)")
    parser.add_argument("--only", help=f"comma-separated sections of {','.join(SECTIONS)}")
    parser.add_argument("--mappings", help="comma-separated numbers of mappings, e.g. 1,100,10000")
    parser.add_argument("--connects", type=int, help="timed connections per round and layout")
    parser.add_argument("--warmup", type=int, help="untimed connections before them")
    parser.add_argument("--rounds", type=int, help="latency rounds")
    parser.add_argument("--blocking", action="store_true", help="latency probes sleep instead of busy-polling (noisier)")
    parser.add_argument("--iperf-seconds", type=int)
    parser.add_argument("--iperf-repeats", type=int)
    parser.add_argument("--connrate-seconds", type=int, help="seconds per wrk run")
    parser.add_argument("--connrate-repeats", type=int, help="wrk runs per path")
    parser.add_argument("--connrate-connections", type=int, help="wrk's concurrent connections")
    parser.add_argument("--apply-repeats", type=int)
    parser.add_argument("--live-size", type=int, help="mappings of the live table changed in place")
    parser.add_argument("--live-rounds", type=int)
    parser.add_argument("--init-runs", type=int)
    parser.add_argument("--failover-trials", type=int, help="HA failover trials per kind of failure")
    args = parser.parse_args(argv)
    options = QUICK if args.quick else FULL
    changes: dict[str, Any] = {}
    if args.only:
        sections = tuple(s.strip() for s in args.only.split(",") if s.strip())
        unknown = set(sections) - set(SECTIONS)
        if unknown:
            parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
        changes["sections"] = sections
    if args.mappings:
        try:
            mappings = tuple(sorted({int(x) for x in args.mappings.split(",")}))
        except ValueError:
            parser.error("--mappings takes comma-separated numbers")
        if not mappings or mappings[0] < 1 or mappings[-1] > MAX_MAPPINGS:
            parser.error(f"--mappings: numbers between 1 and {MAX_MAPPINGS}")
        changes["mappings"] = mappings
    for name in ("connects", "warmup", "rounds", "iperf_seconds", "iperf_repeats", "connrate_seconds",
                 "connrate_repeats", "connrate_connections", "apply_repeats", "live_size", "live_rounds",
                 "init_runs", "failover_trials"):
        value = getattr(args, name)
        if value is not None:
            if value < (0 if name == "warmup" else 1):
                parser.error(f"--{name.replace('_', '-')} must be positive")
            changes[name] = value
    if args.blocking:
        changes["blocking"] = True
    return dataclasses.replace(options, **changes), Path(args.out)


def section_tools(sections: tuple[str, ...]) -> list[str]:
    """The programs beyond ip, nft and ss that the chosen sections run."""
    needs = {"throughput": ("iperf3", "haproxy", "socat"), "connrate": ("nginx", "wrk", "haproxy")}
    return sorted({tool for section in sections for tool in needs.get(section, ())})


def run(options: Options, out: Path, command: str) -> dict[str, Any]:
    from egress_router.lab import Lab, seed_env
    from egress_router.lab import addresses as A

    from . import apply, connrate, failover, latency, names, startup, throughput

    sections = {"latency": latency.run, "names": names.run, "throughput": throughput.run, "connrate": connrate.run,
                "apply": apply.run, "startup": startup.run, "failover": failover.run}
    started = time.monotonic()
    results: dict[str, Any] = {
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": command,
        "options": dataclasses.asdict(options),
        "machine": machine.describe(),
    }
    lan = Lan(router=A.ROUTER_IP, server=A.EXTERNAL[0], source=A.SOURCE, gateway=A.GATEWAY)
    with tempfile.TemporaryDirectory(prefix="egress-bench-") as scratch, Lab(ipv6=False, macvlan=True) as lab:
        bench = Bench(lab=lab, options=options, workdir=Path(scratch), lan=lan, seed_env=seed_env("init"))
        bench.say(f"lab up ({lab.prefix}*); sections: {', '.join(options.sections)}")
        # The router's own first run sets up addresses, routes and forwarding that every
        # layout relies on.
        bench.run_router(bench.router_env())
        for name in SECTIONS:
            if name in options.sections:
                section_started = time.monotonic()
                results[name] = sections[name](bench)
                bench.say(f"{name} done in {time.monotonic() - section_started:.0f} s")
    results["seconds"] = time.monotonic() - started
    return results


def write(results: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    plots = report.plot(results, out)
    path = out / "results.md"
    path.write_text(report.markdown(results, plots))
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    options, out = parse_args(args)
    if os.geteuid() != 0:
        print("benchmarks: the lab needs root (network namespaces, nft)", file=sys.stderr)
        return 1
    missing = [tool for tool in ("ip", "nft", "ss", *section_tools(options.sections)) if shutil.which(tool) is None]
    if missing:
        print(f"benchmarks: missing {', '.join(missing)} (run ./scripts/setup.sh bench)", file=sys.stderr)
        return 1
    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in args)
    try:
        results = run(options, out, command.strip())
    except BenchError as error:
        print(f"benchmarks: {error}", file=sys.stderr)
        return 1
    path = write(results, out)
    print(path.read_text())
    print(f"benchmarks: wrote {path}, {out / 'results.json'} and the plots in {out}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
