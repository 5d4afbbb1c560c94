"""What the benchmark ran on, for the report: figures mean little without it."""

from __future__ import annotations

import os
import platform
import subprocess
import sys


def describe() -> dict[str, str]:
    return {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count() or "?"),
        "kernel": platform.release(),
        "nft": _version(["nft", "--version"]),
        "iperf3": _version(["iperf3", "--version"]),
        "haproxy": _version(["haproxy", "-v"]),
        "socat": _version(["socat", "-V"], contains="socat version"),
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "os": _os_name(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _os_name() -> str:
    try:
        with open("/etc/os-release") as handle:
            for line in handle:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def _version(argv: list[str], contains: str = "") -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    for line in lines:
        if not contains or contains in line:
            return line
    return "unknown"
