"""Shared by the property tests: a namespace of their own in which `nft --check` reads the
plans they draw (root only; the tests that use it are marked `lab`)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def scratch_namespace() -> Iterator[str]:
    name = f"erl-prop-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
