"""Shared fixtures of the lab tests (root only; tests/conftest.py skips them otherwise).

One lab per test module keeps the suite fast (building one takes about a second, mostly the
kernel's linkwatch delay on the bridge); tests that share it start from `router_lab`, which
puts the router namespace back as a fresh pod has it. The session checks that no namespace of
this run outlives it, also after failing tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from egress_router.lab import Lab, sweep_stale
from egress_router.lab import addresses as A
from egress_router.lab.netns import delete_namespaces, list_namespaces
from egress_router.lab.wirings import WIRINGS

# Every endpoint the router tests talk to, in the ext namespace.
SERVERS = [
    ("203.0.113.25", 80, "tcp"),
    ("203.0.113.25", 7000, "tcp"),
    ("203.0.113.25", 5353, "udp"),
    ("203.0.113.26", 80, "tcp"),
    ("203.0.113.26", 443, "tcp"),
    ("203.0.113.27", 5000, "tcp"),
    ("203.0.113.27", 5001, "udp"),
]


def ext_servers(ipv6: bool) -> list[tuple[str, int, str]]:
    """SERVERS, the bulk endpoints on 203.0.113.26, and with `ipv6` the same on the IPv6
    twins of the external addresses (203.0.113.25 -> 2001:db8:2::25)."""
    bulk = [("203.0.113.26", A.DOWNLOAD_PORT, "source"), ("203.0.113.26", A.UPLOAD_PORT, "sink")]
    v4 = [*SERVERS, *bulk]
    twins = dict(zip(A.EXTERNAL, A.EXTERNAL6, strict=True))
    return v4 + ([(twins[a], port, kind) for a, port, kind in v4] if ipv6 else [])


@pytest.fixture(scope="session", autouse=True)
def no_lab_left_behind() -> Iterator[None]:
    if os.geteuid() != 0:
        yield
        return
    sweep_stale()  # what runs killed with SIGKILL left behind; live runs are kept
    yield
    ours = [name for name in list_namespaces() if name.startswith(f"erl-{os.getpid()}-")]
    delete_namespaces(ours)
    assert not ours, f"lab namespaces outlived their tests (now removed): {ours}"


@pytest.fixture(scope="module", params=WIRINGS)
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """The module's lab, once on each pod-network wiring (shared, calico, per-node), with
    strict reverse-path filtering in the router's namespace as many nodes give it: every test
    that uses it runs on each."""
    with Lab(wiring=request.param) as built:
        built.serve(ext_servers(False))
        yield built


@pytest.fixture
def router_lab(lab: Lab) -> Lab:
    """The module's lab with the router namespace as a new pod of its wiring has it: no
    table, macvlan0 present, down and without address, eth0 with its CNI's routes (its
    default route included), no rules or routing tables but the kernel's, forwarding off."""
    lab.reset_router()
    return lab


@pytest.fixture(scope="module")
def lab_options() -> dict[str, Any]:
    """Keyword arguments of `Lab` for `wired_lab`; a module overrides this fixture, e.g. to
    return {"ipv6": True, "pod_mtu": 1400, "drop_icmp_too_big": True}."""
    return {}


@pytest.fixture(scope="module", params=WIRINGS)
def wired_lab(request: pytest.FixtureRequest, lab_options: dict[str, Any]) -> Iterator[Lab]:
    """One lab per wiring (shared, calico, per-node) for the module: every test that uses it
    runs once on each, with `ext_servers` serving."""
    with Lab(wiring=request.param, **lab_options) as built:
        built.serve(ext_servers(built.ipv6))
        yield built


@pytest.fixture
def wired_router_lab(wired_lab: Lab) -> Lab:
    """`wired_lab` with the router namespace as a new pod of its wiring has it."""
    wired_lab.reset_router()
    return wired_lab
