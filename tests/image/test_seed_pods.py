"""The seed's two Pods, run from the built image under `podman kube play`, as in the seed but
for the changes in specs.for_podman: the init container sets the pod up in `init` mode and
exits, the wait container keeps the pod, and connections to the pod leave from the reserved
address (the lab's wiring (a), the shared pod subnet, as a container)."""

from __future__ import annotations

import pytest

from egress_router.lab import SEED_EXPECTATIONS
from egress_router.lab import addresses as A
from egress_router.lab.pods import PodLab, container_logs, dump, for_podman, podman, seed_pod, state

pytestmark = pytest.mark.lab


def init_state(pod: str) -> tuple[str, int]:
    return state(f"{pod}-egress-router")


def test_egress_multi_redirects_every_seed_rule_from_the_reserved_address(pod_lab: PodLab) -> None:
    pod = for_podman(seed_pod("seed-egress-multi.yaml"))
    name = pod["metadata"]["name"]
    try:
        pod_lab.play(dump(pod))
        assert init_state(name) == ("exited", 0), container_logs(f"{name}-egress-router")
        for port, _, server, server_port in SEED_EXPECTATIONS:
            probe = pod_lab.connect(name, port)
            assert probe.ok, f"{port}: {probe.error}"
            assert probe.server == (server, server_port)
            assert probe.source == A.SOURCE, f"{port}: the server saw {probe.source}"
    finally:
        podman(["pod", "rm", "-f", "-t", "0", name], check=False)


def test_egress_1_without_a_prefix_reaches_its_one_destination_on_every_port(
    pod_lab: PodLab,
) -> None:
    pod = for_podman(seed_pod("seed-egress-1.yaml"))
    name = pod["metadata"]["name"]
    try:
        pod_lab.play(dump(pod))
        assert init_state(name) == ("exited", 0), container_logs(f"{name}-egress-router")
        for port in (80, 443):
            probe = pod_lab.connect(name, port)
            assert probe.ok, f"{port}: {probe.error}"
            assert probe.server == ("203.0.113.25", port)
            assert probe.source == "192.0.2.98", f"{port}: the server saw {probe.source}"
    finally:
        podman(["pod", "rm", "-f", "-t", "0", name], check=False)


def test_the_image_is_the_one_manifests_names_and_carries_no_build_leftovers(image: str) -> None:
    from egress_router.kube.spec import DEFAULT_IMAGE

    assert podman(["image", "exists", DEFAULT_IMAGE], check=False).returncode == 0, DEFAULT_IMAGE
    script = (
        "for tool in gcc cc make curl; do command -v $tool; done;"
        " find /usr/share/doc -type f ! -name copyright;"
        " find /usr/share/man /var/lib/apt/lists /var/cache/apt -mindepth 1 -maxdepth 1 -type f;"
        " ls -d /root/.cache /wheels 2>/dev/null; true"
    )
    done = podman(["run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c", script])
    assert done.stdout.split() == [], f"found in the image: {done.stdout.split()}"
