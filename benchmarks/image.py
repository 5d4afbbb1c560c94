"""`python -m benchmarks.image [--runs N]`: time to ready, the image against the bare command.

As root, after `make image`. Each run is a new pod (podman) or a new router namespace as a new
pod has it (bare), with the seed's example:

- init, image: the seed's `egress-multi` Pod under `podman kube play`. Reported are the init
  container's own run (podman's StartedAt to FinishedAt: the process from exec to exit) and
  `kube play` from call to return (it returns once the init container is done): what a user
  waits for, podman's pod, network and container set-up included.
- init, bare: the installed `egress-router` command spawned inside the lab's router namespace
  (benchmarks/probes/init_timer.py, as `make bench`'s start-up section does).
- legacy, image: the Pod of `manifests --mode legacy` under kube play; from the router
  container's StartedAt (and from the kube play call) to the first 200 from `/readyz`, polled
  from the host every 5 ms.
- legacy, bare: `egress-router` in legacy mode started with `ip netns exec` in the router
  namespace; from the spawn to the first 200 from `/readyz`, polled from the client pod.

Prints one line per figure (median, fastest, slowest, in ms) and the runs as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from egress_router.lab import Lab, seed_env
from egress_router.lab import addresses as A
from egress_router.lab.pods import (
    PodLab,
    build_image,
    dump,
    for_podman,
    inspect,
    legacy_pod,
    podman,
    remove_all,
    seed_pod,
    state,
)

from . import stats
from .context import router_command
from .startup import NEW_POD

INIT_TIMER = Path(__file__).with_name("probes") / "init_timer.py"
POLL = 0.005


def started_at(container: str) -> float:
    """podman's StartedAt (RFC 3339, nanoseconds) as a Unix time."""
    return _unix(str(inspect(container)["State"]["StartedAt"]))


def finished_at(container: str) -> float:
    return _unix(str(inspect(container)["State"]["FinishedAt"]))


def _unix(text: str) -> float:
    # "2026-12-01T20:04:05.123456789Z" or "+00:00"; Python parses microseconds only.
    head, _, rest = text.partition(".")
    digits = "".join(c for c in rest if c.isdigit())
    zone = rest[len(digits):].replace("Z", "+00:00") or "+00:00"
    moment = datetime.datetime.fromisoformat(f"{head}{zone}")
    return moment.timestamp() + int(digits or "0") / 10 ** len(digits or "0")


def ready(make_socket: Callable[[], socket.socket], address: str, port: int = 9090) -> bool:
    try:
        with make_socket() as sock:
            sock.settimeout(0.5)
            sock.connect((address, port))
            sock.sendall(b"GET /readyz HTTP/1.0\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.0 200")
    except OSError:
        return False


def wait_ready(make_socket: Callable[[], socket.socket], address: str, timeout: float = 30) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ready(make_socket, address):
            return time.time()
        time.sleep(POLL)
    raise RuntimeError(f"/readyz at {address} did not answer 200 within {timeout}s")


def image_init(lab: PodLab) -> dict[str, float]:
    pod = for_podman(seed_pod("seed-egress-multi.yaml"))
    name = pod["metadata"]["name"]
    try:
        called = time.time()
        lab.play(dump(pod))
        returned = time.time()
        router = f"{name}-egress-router"
        if state(router) != ("exited", 0):
            raise RuntimeError(f"the init container failed: {podman(['logs', router]).stderr}")
        return {"container": finished_at(router) - started_at(router), "kube_play": returned - called}
    finally:
        podman(["pod", "rm", "-f", "-t", "0", name], check=False)


def image_legacy(lab: PodLab, workdir: Path) -> dict[str, float]:
    configmap, pod = legacy_pod("legacy")
    name = pod["metadata"]["name"]
    cm_file = workdir / "configmap.yaml"
    cm_file.write_text(dump(configmap))
    try:
        called = time.time()
        lab.play(dump(pod), "--configmap", str(cm_file))
        address = lab.address(name)
        at = wait_ready(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM), address)
        start = started_at(f"{name}-egress-router")
        return {"container": at - start, "kube_play": at - called}
    finally:
        podman(["pod", "rm", "-f", "-t", "0", name], check=False)
        podman(["volume", "rm", "-f", configmap["metadata"]["name"]], check=False)


def bare_init(lab: Lab) -> float:
    lab.reset_router()
    request = {"env": lab.router_env(seed_env("init")), "argv": router_command(), "before": NEW_POD}
    done = lab.exec(
        "router", [sys.executable, str(INIT_TIMER), "1"], input=json.dumps(request), timeout=60
    )
    result = json.loads(done.stdout)
    if result["returncode"] != 0:
        raise RuntimeError(f"bare init failed: {result['stderr']}")
    return float(result["seconds"][0])


def bare_legacy(lab: Lab) -> float:
    lab.reset_router()
    env = seed_env("legacy", EGRESS_DESTINATION="80 tcp 203.0.113.25\n8080 tcp 203.0.113.26 80\n")
    spawned = time.time()
    process = lab.popen(
        "router", router_command(), env=lab.router_env(env),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        at = wait_ready(lambda: lab.socket("client"), A.ROUTER_IP)
        return at - spawned
    finally:
        process.terminate()
        process.wait(5)


def summary(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    low, high = stats.spread(ms)
    return f"{name:<40} median {stats.median(ms):7.1f} ms  (fastest {low:.1f}, slowest {high:.1f}, {len(ms)} runs)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.image", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("benchmarks.image: needs root (network namespaces and podman)", file=sys.stderr)
        return 1
    print(build_image(), file=sys.stderr)
    remove_all(prefix=None)
    runs: dict[str, list[float]] = {k: [] for k in (
        "init, image: container run", "init, image: kube play call to done", "init, bare command",
        "legacy, image: container start to ready", "legacy, image: kube play call to ready",
        "legacy, bare command: start to ready",
    )}
    with tempfile.TemporaryDirectory() as work, PodLab(Path(work)) as pods, Lab() as lab:
        for _ in range(args.runs):
            init = image_init(pods)
            runs["init, image: container run"].append(init["container"])
            runs["init, image: kube play call to done"].append(init["kube_play"])
            runs["init, bare command"].append(bare_init(lab))
            legacy = image_legacy(pods, Path(work))
            runs["legacy, image: container start to ready"].append(legacy["container"])
            runs["legacy, image: kube play call to ready"].append(legacy["kube_play"])
            runs["legacy, bare command: start to ready"].append(bare_legacy(lab))
    for name, values in runs.items():
        print(summary(name, values))
    print(json.dumps(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
