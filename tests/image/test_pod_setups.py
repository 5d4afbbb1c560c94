"""The image in the pods that docs/kubernetes.md describes besides the seed's: least privilege
(NET_ADMIN and NET_RAW, forwarding set by someone else), and a pod that lacks macvlan0."""

from __future__ import annotations

import pytest

from egress_router.lab import addresses as A
from egress_router.lab.pods import (
    IMAGE,
    PREFIX,
    PodLab,
    PodmanError,
    container_logs,
    dump,
    for_podman,
    inspect,
    podman,
    seed_pod,
    state,
)

pytestmark = pytest.mark.lab

SEED_ENV = {
    "EGRESS_SOURCE": f"{A.SOURCE}/{A.LAN_PREFIX}",
    "EGRESS_GATEWAY": A.GATEWAY,
    "EGRESS_DESTINATION": A.SEED_DESTINATION,
    "EGRESS_ROUTER_MODE": "init",
}


def test_net_admin_and_net_raw_suffice_where_the_pod_has_forwarding_on(pod_lab: PodLab) -> None:
    # kube play ignores a Pod's sysctls, so the pod is made with podman's own commands: the
    # sysctl on the pod (as the kubelet would set it, or egress-router-cni's "forwarding"),
    # the router as an init container with every capability dropped but the two.
    pod = f"{PREFIX}least"
    router = f"{pod}-egress-router"
    env = [arg for key, value in SEED_ENV.items() for arg in ("--env", f"{key}={value}")]
    try:
        podman(["pod", "create", "--name", pod, "--sysctl", "net.ipv4.ip_forward=1",
                *pod_lab.networks()])
        podman(["create", "--pod", pod, "--name", router, "--init-ctr", "always",
                "--cap-drop", "all", "--cap-add", "NET_ADMIN,NET_RAW", *env, IMAGE])
        podman(["create", "--pod", pod, "--name", f"{pod}-wait", "--cap-drop", "all",
                "--entrypoint", "sleep", IMAGE, "infinity"])
        podman(["pod", "start", pod])
        assert state(router) == ("exited", 0), container_logs(router)
        caps = inspect(router)["EffectiveCaps"]
        assert sorted(caps) == ["CAP_NET_ADMIN", "CAP_NET_RAW"]  # type: ignore[arg-type]
        probe = pod_lab.connect(pod, 8443)
        assert (probe.server, probe.source) == (("203.0.113.26", 443), A.SOURCE), probe
    finally:
        podman(["pod", "rm", "-f", "-t", "0", pod], check=False)


def test_a_pod_without_macvlan0_fails_with_the_routers_one_line(pod_lab: PodLab) -> None:
    pod = for_podman(seed_pod("seed-egress-multi.yaml"))
    name = pod["metadata"]["name"] = pod["metadata"]["name"] + "-nomacvlan"
    router = f"{name}-egress-router"
    try:
        # The init container fails, so the pod does not start: kube play says so.
        with pytest.raises(PodmanError, match="init container .* exited with code 1"):
            pod_lab.play(dump(pod), macvlan=False)
        assert state(router) == ("exited", 1)
        log = container_logs(router).strip().splitlines()
        assert len(log) == 1, log
        assert log[0].startswith(
            "egress-router: setup error: the egress interface macvlan0 does not exist in this pod"
        ), log
        assert state(f"{name}-egress-router-wait")[0] != "running"
    finally:
        podman(["pod", "rm", "-f", "-t", "0", name], check=False)
