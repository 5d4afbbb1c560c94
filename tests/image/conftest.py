"""Fixtures of the image tests: the image, built once per session by `make image`'s script
(which installs podman first on a fresh machine), and one lab with podman networks per module
(egress_router.lab.pods draws it). No podman object of this run may outlive the session."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from egress_router.lab import sweep_stale
from egress_router.lab.pods import IMAGE, PodLab, build_image, leftovers, remove_all


@pytest.fixture(scope="session")
def image() -> str:
    started = time.monotonic()
    report = build_image()
    print(f"{report} ({time.monotonic() - started:.1f}s in this session)")
    return IMAGE


@pytest.fixture(scope="session", autouse=True)
def no_podman_objects_left_behind(image: str) -> Iterator[None]:
    # What runs killed with SIGKILL left behind: podman objects, and lab namespaces (the host
    # end of a pod LAN's veth goes with its peer there).
    remove_all(prefix=None)
    sweep_stale()
    yield
    ours = leftovers()
    remove_all()
    assert not ours, f"podman objects outlived their tests (now removed): {ours}"


@pytest.fixture(scope="module")
def pod_lab(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodLab]:
    with PodLab(tmp_path_factory.mktemp("pods")) as built:
        yield built
