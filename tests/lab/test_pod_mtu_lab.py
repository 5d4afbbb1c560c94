"""MSS clamping on a real path MTU black hole: the router pod's network is narrower (1400) than
the LAN and the client believe (1500), and the LAN's gateway drops the ICMP "fragmentation
needed" / "packet too big" that path MTU discovery needs, as many firewalls do, and so does
the pod network. On every pod-network wiring, with strict reverse-path filtering."""

from __future__ import annotations

from typing import Any

import pytest

from egress_router.lab import Lab, seed_env
from egress_router.lab import addresses as A

pytestmark = pytest.mark.lab

SOURCE = A.SOURCE
BIG = 8 * 1024 * 1024  # bytes: thousands of full-sized segments each way
RULES = f"{A.DOWNLOAD_PORT} tcp 203.0.113.26\n{A.UPLOAD_PORT} tcp 203.0.113.26\n"


@pytest.fixture(scope="module")
def lab_options() -> dict[str, Any]:
    return {"pod_mtu": 1400, "drop_icmp_too_big": True}


def init(lab: Lab) -> None:
    # The pod network delivers no "too big" either: uploads meet the black hole at the node.
    lab.set_icmp_too_big_dropped(True, on_nodes=True)
    # Nothing learnt by an earlier test may help: the ends forget their path MTUs.
    for role in ("client", "ext"):
        lab.exec(role, ["ip", "route", "flush", "cache"], check=False)
        lab.exec(role, ["ip", "tcp_metrics", "flush", "all"], check=False)
    done = lab.run_router(seed_env("init", EGRESS_DESTINATION=RULES))
    assert done.returncode == 0, done.stderr


def test_large_transfers_complete_both_ways_when_the_pod_network_is_narrower(wired_router_lab: Lab) -> None:
    lab = wired_router_lab
    init(lab)
    down = lab.download(A.DOWNLOAD_PORT, BIG, timeout=20)
    up = lab.upload(A.UPLOAD_PORT, BIG, timeout=20)
    assert down.ok, f"{lab.wiring.name} download: {down}"
    assert up.ok, f"{lab.wiring.name} upload: {up}"
    assert down.source == SOURCE


def test_without_the_clamp_the_same_download_stalls(wired_router_lab: Lab) -> None:
    # The proof that the lab's black hole is real and the clamp is what gets through it.
    lab = wired_router_lab
    init(lab)
    listing = lab.exec("router", ["nft", "-a", "list", "chain", "inet", "egress_router", "forward"]).stdout
    handles = [line.rsplit("# handle ", 1)[1] for line in listing.splitlines() if "maxseg size set" in line]
    assert len(handles) == 2, listing
    for handle in handles:
        lab.exec("router", ["nft", "delete", "rule", "inet", "egress_router", "forward", "handle", handle])
    down = lab.download(A.DOWNLOAD_PORT, BIG, timeout=5)
    up = lab.upload(A.UPLOAD_PORT, BIG, timeout=5)
    assert not down.ok and down.moved < BIG, f"{lab.wiring.name}: {down}"
    assert not up.ok, f"{lab.wiring.name}: {up}"
