"""The Pods the image tests play, derived from the seed's and from `manifests` by the only
changes podman 4.3 and the lab need (each one named where it is made)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from egress_router.lab import addresses as A

from .podman import IMAGE, PREFIX

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# podman 4.3 runs a "once" init container (its default) only after a 20-27 s delay, and
# restarts a finished one forever unless the pod never restarts: "always" with Never.
INIT_TYPE = "io.podman.annotations.init.container.type"
# The seed's values on a real LAN, and what stands for them in the lab.
LAB_VALUES = {
    "192.168.12.99/24": f"{A.SOURCE}/{A.LAN_PREFIX}",
    "192.168.12.1": A.GATEWAY,
    # egress-1's placeholders: its own reserved address (without a prefix length: only the
    # gateway is then reachable on the LAN) and the seed's example destination.
    "<egress_router>": "192.0.2.98",
    "<egress_gateway>": A.GATEWAY,
    "<egress_destination>": "203.0.113.25",
}


def seed_pod(example: str) -> dict[str, Any]:
    doc = yaml.safe_load((EXAMPLES / example).read_text())
    assert isinstance(doc, dict)
    return doc


def for_podman(pod: dict[str, Any], wait: bool = True) -> dict[str, Any]:
    """The changes: this run's name, the image, the lab's addresses, podman 4.3's init
    container settings, and a wait container that runs here (the router image sleeping)."""
    meta = pod["metadata"]
    meta["name"] = PREFIX + meta["name"]
    meta.setdefault("annotations", {})[INIT_TYPE] = "always"
    spec = pod["spec"]
    spec["restartPolicy"] = "Never"
    for container in spec.get("initContainers", []) + spec["containers"]:
        container["image"] = IMAGE
        for var in container.get("env", []):
            if "value" in var:
                var["value"] = LAB_VALUES.get(var["value"], var["value"])
    if wait:
        for container in spec["containers"]:
            if container["name"] == "egress-router-wait":
                container["command"] = ["sleep", "infinity"]
    return pod


def dump(*docs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)
