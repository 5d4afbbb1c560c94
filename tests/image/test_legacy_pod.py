"""The Pod that `egress-router manifests --mode legacy` writes, from the built image under
`podman kube play`, with its ConfigMap mounted as a file: the router is the pod's long-lived
container, answers its probes, applies an edited ConfigMap live and ends promptly on stop."""

from __future__ import annotations

import http.client
import time
from pathlib import Path
from typing import Any

import pytest

from egress_router.lab import addresses as A
from egress_router.lab.pods import PodLab, container_logs, dump, legacy_pod, podman, state

pytestmark = pytest.mark.lab


def get(address: str, path: str) -> tuple[int, str]:
    """(status, body); (0, reason) while nothing answers yet."""
    connection = http.client.HTTPConnection(address, 9090, timeout=3)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    except OSError as error:
        return 0, str(error)
    finally:
        connection.close()


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


def test_the_legacy_pod_serves_probes_reloads_its_configmap_and_stops_promptly(
    pod_lab: PodLab,
) -> None:
    configmap, pod = legacy_pod("legacy")
    name = pod["metadata"]["name"]
    router = f"{name}-egress-router"
    try:
        cm_file = pod_lab.workdir / f"{name}-configmap.yaml"
        cm_file.write_text(dump(configmap))
        pod_lab.play(dump(pod), "--configmap", str(cm_file))
        address = pod_lab.address(name)
        wait_until(lambda: get(address, "/readyz")[0] == 200, 15, "/readyz answers 200")
        assert get(address, "/healthz") == (200, "ok\n")
        # The exec-style probe, for runtimes that turn probes into commands.
        done = podman(["exec", router, "egress-router", "health", "--ready"], check=False)
        assert (done.returncode, done.stdout) == (0, "/readyz: ready\n"), done.stderr
        probe = pod_lab.connect(name, 8080)
        assert (probe.server, probe.source) == (("203.0.113.26", 80), A.SOURCE), probe

        # podman writes a ConfigMap volume's file in place (kubelet swaps symlinks instead).
        volume = configmap["metadata"]["name"]
        mountpoint = Path(podman(["volume", "inspect", "--format", "{{.Mountpoint}}", volume]).stdout.strip())
        (mountpoint / "destinations").write_text("80 tcp 203.0.113.25\n8080 tcp 203.0.113.26 443\n")
        wait_until(
            lambda: pod_lab.connect(name, 8080, timeout=1).server == ("203.0.113.26", 443),
            10, "the edited rule applies live",
        )
        assert get(address, "/readyz")[0] == 200

        started = time.monotonic()
        podman(["pod", "stop", "-t", "10", name])
        stopped = time.monotonic() - started
        assert state(router) == ("exited", 0), container_logs(router)
        assert stopped < 3, f"the router took {stopped:.1f}s to stop on SIGTERM"
        assert "Traceback" not in container_logs(router)
    finally:
        podman(["pod", "rm", "-f", "-t", "0", name], check=False)
