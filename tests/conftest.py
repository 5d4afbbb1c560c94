"""Test tiers: pure and fake-backed tests run anywhere; tests marked `lab` need root and the
kernel features of the lab. They skip without root, except under CI (CI=true), where they must
run: a skipped lab test there is a failure."""

from __future__ import annotations

import os
import shutil

import pytest


def lab_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "lab tests need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"lab tests need the {tool} command"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = lab_unavailable()
    if reason is None:
        return
    lab_items = [item for item in items if "lab" in item.keywords]
    if lab_items and os.environ.get("CI") == "true":
        pytest.exit(f"CI=true but the lab tests cannot run: {reason}", returncode=1)
    for item in lab_items:
        item.add_marker(pytest.mark.skip(reason=reason))
