"""Capabilities and host limits, named before anything changes."""

from __future__ import annotations

import pytest

from egress_router.errors import SetupError
from egress_router.preflight import check_capabilities, conntrack_warning


def status(capeff: int):  # type: ignore[no-untyped-def]
    text = f"Name:\tpython\nCapInh:\t0000000000000000\nCapEff:\t{capeff:016x}\n"
    return lambda path: text if path == "/proc/self/status" else None


def test_net_admin_and_net_raw_are_enough() -> None:
    check_capabilities(status((1 << 12) | (1 << 13)))


@pytest.mark.parametrize(
    ("caps", "named"),
    [(1 << 13, "NET_ADMIN"), (1 << 12, "NET_RAW"), (0, "NET_ADMIN and NET_RAW")],
)
def test_missing_capabilities_are_named(caps: int, named: str) -> None:
    with pytest.raises(SetupError) as caught:
        check_capabilities(status(caps))
    assert f"missing capability {named}" in str(caught.value)
    assert "capabilities.add" in str(caught.value)


def test_conntrack_limit_warning() -> None:
    assert conntrack_warning(1000, lambda _: "65536\n") is None
    warning = conntrack_warning(100000, lambda _: "65536\n")
    assert warning is not None and "nf_conntrack_max is 65536" in warning
    assert conntrack_warning(1000, lambda _: None) is None
