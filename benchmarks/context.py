"""The one object every section gets: the lab, the options, a scratch folder, and helpers that
run the benchmark's probes and `nft` inside the lab's namespaces."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from egress_router.lab.topology import stop_process
from egress_router.schema import TABLE_FAMILY, TABLE_NAME

from .layouts import FLOOR_TABLE, LINEAR_TABLE, Lan, clear_script, floor_route
from .options import Options

PROBES = Path(__file__).resolve().parent / "probes"
ROUTER_TABLE = f"{TABLE_FAMILY} {TABLE_NAME}"


def router_command() -> list[str]:
    """The command a pod runs: the image's ENTRYPOINT is the installed `egress-router` script;
    `python -m egress_router` (which also loads runpy) where it is not installed."""
    script = Path(sys.executable).with_name("egress-router")
    return [str(script)] if script.exists() else [sys.executable, "-m", "egress_router"]


class BenchError(RuntimeError):
    """A step of the benchmark failed; the message says which and why."""


@dataclass
class Bench:
    lab: Any  # egress_router.lab.Lab
    options: Options
    workdir: Path
    lan: Lan
    seed_env: dict[str, str]

    def say(self, message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)

    def file(self, name: str, text: str) -> str:
        path = self.workdir / name
        path.write_text(text)
        return str(path)

    def exec(self, role: str, argv: list[str], timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess[str]:
        done = self.lab.exec(role, argv, check=False, timeout=timeout, input=input)
        if done.returncode != 0:
            raise BenchError(
                f"failed to run {' '.join(argv[:3])} in {role}: exit {done.returncode}: "
                f"{(done.stderr or '').strip()[-600:]}"
            )
        return done

    def probe(self, role: str, script: str, args: list[str], timeout: float = 120, input: str | None = None) -> Any:
        """Run one of `probes/` with this Python in `role`'s namespace; return its JSON."""
        done = self.exec(role, [sys.executable, str(PROBES / script), *args], timeout=timeout, input=input)
        return json.loads(done.stdout)

    def nft(self, script: str, name: str = "script.nft", timeout: float = 120) -> float:
        """`nft -f` a script in the router's namespace; return the wall time it took."""
        path = self.file(name, script)
        started = time.perf_counter()
        self.exec("router", ["nft", "-f", path], timeout=timeout)
        return time.perf_counter() - started

    def clear_tables(self) -> None:
        """Remove every NAT table, the router's and the benchmark's, and the floor's route:
        the next layout is alone."""
        self.nft(clear_script(ROUTER_TABLE, LINEAR_TABLE, FLOOR_TABLE), "clear.nft")
        self.lab.exec("router", ["ip", "route", "del", *floor_route(self.lan).split()], check=False)

    def route_directly(self) -> None:
        """The floor's (and the userspace proxies') way out: a plain route, no policy routing."""
        self.exec("router", ["ip", "route", "replace", *floor_route(self.lan).split()])

    def router_env(self, **overrides: str) -> dict[str, str]:
        env = dict(self.seed_env)
        env.update(overrides)
        return env

    def run_router(self, env: dict[str, str]) -> None:
        done = self.lab.run_router(env)
        if done.returncode != 0:
            raise BenchError(f"the router failed (exit {done.returncode}): {done.stderr.strip()[-600:]}")

    def start(self, role: str, argv: list[str], ready: str = "ready", timeout: float = 10) -> subprocess.Popen[str]:
        """Start a long-running process in `role` (stopped at lab teardown at the latest) and
        wait for it to print `ready`."""
        process = self.lab.popen(role, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], timeout)
        line = process.stdout.readline() if readable else ""
        if line.strip() != ready:
            stop(process)
            raise BenchError(f"failed to start {' '.join(argv[:3])} in {role}: not ready in {timeout}s")
        return process

    def wait_listening(self, role: str, port: int, timeout: float = 10) -> None:
        """Poll `ss` until something in `role` listens on TCP `port` (for servers that print
        nothing when they are ready: haproxy, socat, iperf3)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.lab.exec(role, ["ss", "-Hltn", f"sport = :{port}"], check=False)
            if done.stdout.strip():
                return
            time.sleep(0.05)
        raise BenchError(f"nothing listens on port {port} in {role} after {timeout}s")

    def timed_runs(self, argv: list[str], env: dict[str, str], runs: int, before: list[str] | None = None) -> dict[str, Any]:
        """Time `runs` whole processes spawned inside the router namespace (see
        probes/init_timer.py); the lab's PATH and PYTHONPATH are added to `env`."""
        request = {"argv": argv, "env": self.lab.router_env(env), "before": before}
        result: dict[str, Any] = self.probe("router", "init_timer.py", [str(runs)], timeout=60 + 10 * runs, input=json.dumps(request))
        if result["returncode"] != 0:
            raise BenchError(f"{' '.join(argv[:4])} failed (exit {result['returncode']}): {result['stderr'].strip()[-600:]}")
        return result

    def destination_env(self, path: str) -> dict[str, str]:
        env = self.router_env(EGRESS_DESTINATION_FILE=path)
        env.pop("EGRESS_DESTINATION", None)
        return env


def stop(process: subprocess.Popen[str], grace: float = 2.0) -> None:
    """Stop a process this benchmark started (the lab would at teardown; this is sooner)."""
    stop_process(process, grace)
