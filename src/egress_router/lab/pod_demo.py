"""The pod demo: the seed's Pod, from the built image, under `podman kube play` (`make
pod-demo`, as root; `make image` first).

Builds the lab with podman networks (egress_router.lab.pods), plays the seed's `egress-multi`
Pod with only the changes podman 4.3 and the lab need, prints the Pod it played, the init
container's log, and one connection per seed rule from this host (the client) to the pod,
with the source address each external server saw. Removes the pod, the networks and the lab
however it ends. Exits 1 if any connection did not do what the seed says.
"""

from __future__ import annotations

import signal
import sys
import tempfile
import time
from pathlib import Path

from . import addresses as A
from .demo import RULE_WORDS, _interrupt, cannot_run, say
from .netns import sweep_stale
from .pods import PodLab, PodmanError, container_logs, dump, for_podman, remove_all, seed_pod


def main() -> int:
    problem = cannot_run()
    if problem:
        say(f"pod demo: {problem}")
        return 1
    signal.signal(signal.SIGTERM, _interrupt)
    sweep_stale()
    try:
        remove_all(prefix=None)
        with tempfile.TemporaryDirectory() as work, PodLab(Path(work)) as lab:
            return run(lab)
    except KeyboardInterrupt:
        say("\ninterrupted: the pod, the networks and the lab have been removed")
        return 130
    except PodmanError as error:
        say(f"pod demo: {error}")
        return 1


def run(lab: PodLab) -> int:
    say("egress-router pod demo: the seed's Pod, from the image, under podman kube play\n")
    say(f"  pod eth0 on podman network {lab.cluster} (internal; this host is the client)")
    say(f"  pod macvlan0 on podman network {lab.lan}: macvlan on {lab.parent}, a veth into")
    say(f"  the lab's LAN, gateway {A.GATEWAY}, servers {', '.join(A.EXTERNAL)} behind it\n")
    pod = for_podman(seed_pod("seed-egress-multi.yaml"))
    name = pod["metadata"]["name"]
    say("The Pod played (examples/seed-egress-multi.yaml, but for image, lab addresses,")
    say("podman 4.3's init container annotation and restartPolicy, and the wait command):")
    for line in dump(pod).splitlines():
        say(f"    {line}")
    started = time.perf_counter()
    lab.play(dump(pod))
    say(f"\n  -> kube play done in {time.perf_counter() - started:.2f}s; init container log:")
    for line in container_logs(f"{name}-egress-router").splitlines() or ["(nothing: init mode is silent when all went well)"]:
        say(f"    {line}")

    say(f"\nConnections from this host to the pod at {lab.address(name)}:")
    failures = 0
    for port, _, address, remote_port in A.SEED_EXPECTATIONS:
        probe = lab.connect(name, port)
        good = probe.ok and probe.server == (address, remote_port) and probe.source == A.SOURCE
        failures += not good
        say(f"  host -> pod:{port:<5} => {probe}  [{'ok' if good else 'WRONG'}]")
        say(f"      {RULE_WORDS.get(port, '')}: expected {address}:{remote_port}")
    say()
    if failures:
        say(f"FAILED: {failures} connection(s) did not do what the seed says")
        return 1
    say(f"All good: every connection left the pod from the reserved source {A.SOURCE}.")
    say("Removing the pod, the podman networks and the lab.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
