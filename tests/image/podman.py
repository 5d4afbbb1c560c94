"""podman as the image tests use it: the project's containers.conf (scripts/image/env.sh sets
the same variable for the scripts), one name prefix per run, and removal of everything with
that prefix, also what a killed earlier run left behind."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = ROOT / "scripts" / "image" / "containers.conf"
IMAGE = "localhost/egress-router:latest"
# "eri-<pid>-<4 hex>-": the pid tells a dead run's leftovers from those of a live one.
PREFIX = f"eri-{os.getpid()}-{secrets.token_hex(2)}-"
PREFIX_PATTERN = re.compile(r"^eri-(\d+)-[0-9a-f]{4}-")


class PodmanError(RuntimeError):
    pass


def env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(
    args: Sequence[str], check: bool = True, timeout: float = 120, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(),
        input=input,
        check=False,
    )
    if check and done.returncode != 0:
        raise PodmanError(f"podman {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def names(kind: str) -> list[str]:
    """Names of every pod, container, network or volume (`kind`) podman knows."""
    fmt = "{{.Name}}"
    args = {
        "pod": ["pod", "ps", "--format", fmt],
        "container": ["ps", "-a", "--format", "{{.Names}}"],
        "network": ["network", "ls", "--format", fmt],
        "volume": ["volume", "ls", "--format", fmt],
    }[kind]
    return podman(args).stdout.split()


def _ours_or_dead(name: str, prefix: str | None) -> bool:
    if prefix is not None:
        return name.startswith(prefix)
    match = PREFIX_PATTERN.match(name)
    if not match:
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def remove_all(prefix: str | None = PREFIX) -> list[str]:
    """Remove the pods, containers, volumes and networks named with `prefix` (None: those of
    dead runs); returns what was removed."""
    removed = []
    for kind, rm in (
        ("pod", ["pod", "rm", "-f", "-t", "0"]),
        ("container", ["rm", "-f", "-t", "0"]),
        ("volume", ["volume", "rm", "-f"]),
        ("network", ["network", "rm", "-f"]),
    ):
        found = [n for n in names(kind) if _ours_or_dead(n, prefix)]
        if found:
            podman([*rm, *found], check=False)
            removed += found
    return removed


def container_logs(name: str) -> str:
    done = podman(["logs", name], check=False)
    return done.stdout + done.stderr


def inspect(name: str) -> dict[str, object]:
    found = json.loads(podman(["inspect", name]).stdout)
    assert isinstance(found, list) and found, f"podman inspect {name}: nothing"
    item = found[0]
    assert isinstance(item, dict)
    return item
