"""Shared helpers of the kube tests: render through the real command, parse back."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from egress_router.kube import manifests

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SEED_ARGS = [
    "--source", "192.0.2.99/24", "--gateway", "192.0.2.1",
    "--destination", "80   tcp 203.0.113.25",
    "--destination", "8080 tcp 203.0.113.26 80",
    "--destination", "8443 tcp 203.0.113.26 443",
    "--destination", "53 udp 203.0.113.25",
    "--destination", "203.0.113.27",
]


def render(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[str, list[dict]]:  # type: ignore[type-arg]
    code = manifests.main(args, {})
    out = capsys.readouterr().out
    assert code == 0, out
    return out, [d for d in yaml.safe_load_all(out) if d is not None]
