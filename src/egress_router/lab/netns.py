"""Network-namespace primitives: run code in a namespace, and remove namespaces for good.

Sockets and /proc/sys writes are done from a short-lived thread that has joined the namespace
with setns(2): a socket belongs for life to the namespace it was created in, and a network
namespace is per thread, so the rest of the process is never moved. This costs microseconds
where `ip netns exec python ...` costs tens of milliseconds per probe.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

NETNS_DIR = "/run/netns"
ETC_NETNS = "/etc/netns"  # per-namespace files that `ip netns exec` mounts over /etc
CLONE_NEWNET = 0x40000000
# "erl-<pid>-<4 hex>-<role>": the pid lets a later run tell a dead run's leftovers from a live one.
PREFIX_PATTERN = re.compile(r"^erl-(\d+)-[0-9a-f]{4}-")

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(RuntimeError):
    """A namespace operation failed; the message names the namespace and the kernel's reason."""


def in_netns(namespace: str, function: Callable[[], T]) -> T:
    """Call `function` in a fresh thread that has joined `namespace`, and return its result."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            fd = os.open(os.path.join(NETNS_DIR, namespace), os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise NetnsError(f"failed to enter namespace {namespace}: {os.strerror(code)}")
            finally:
                os.close(fd)
            outcome["value"] = function()
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread below
            outcome["error"] = error

    # Never reuse this thread: it is in the other namespace until it ends.
    thread = threading.Thread(target=target, name=f"netns-{namespace}", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def write_sysctls(namespace: str, values: Iterable[tuple[str, str]]) -> None:
    """Write `net/...` sysctls of `namespace`: /proc/sys/net follows the writing thread's
    namespace, so no `ip netns exec sysctl` process is needed."""
    items = list(values)

    def write() -> None:
        for key, value in items:
            with open(f"/proc/sys/{key}", "w") as handle:
                handle.write(value)

    in_netns(namespace, write)


def read_sysctl(namespace: str, key: str) -> str:
    def read() -> str:
        with open(f"/proc/sys/{key}") as handle:
            return handle.read().strip()

    return in_netns(namespace, read)


def ip(
    args: list[str], stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run `ip`; on failure raise with ip's own message (and, for a batch, the failing line)."""
    done = subprocess.run(
        ["ip", *args], check=False, input=stdin, capture_output=True, text=True, timeout=30
    )
    if check and done.returncode != 0:
        raise NetnsError(f"failed to run ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def ip_batch(lines: list[str], namespace: str | None = None) -> None:
    args = ["-n", namespace] if namespace else []
    ip([*args, "-batch", "-"], "".join(f"{line}\n" for line in lines))


def list_namespaces() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def namespace_pids(namespace: str) -> list[int]:
    done = ip(["netns", "pids", namespace], check=False)
    return [int(word) for word in done.stdout.split() if word.isdigit()]


def kill_namespace_processes(namespaces: Iterable[str], grace: float = 1.0) -> None:
    """SIGTERM every process in `namespaces`, then SIGKILL what is left after `grace` seconds."""
    names = list(namespaces)
    pids = {pid for ns in names for pid in namespace_pids(ns)} - {os.getpid()}
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = {pid for pid in pids if _alive(pid)}
        time.sleep(0.02)
    _signal_all(pids, signal.SIGKILL)
    # A process may have forked after the first look: one more, unconditional pass.
    _signal_all({pid for ns in names for pid in namespace_pids(ns)} - {os.getpid()}, signal.SIGKILL)


def _signal_all(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def delete_namespaces(namespaces: Iterable[str]) -> None:
    """Kill what runs in `namespaces` and delete them; the veths, bridge and macvlan inside go
    with them, and the files `ip netns exec` mounts into them (/etc/netns/NS, the lab's
    resolv.conf). Missing namespaces are fine (teardown must be safe to repeat)."""
    wanted = list(namespaces)
    for ns in wanted:
        shutil.rmtree(os.path.join(ETC_NETNS, ns), ignore_errors=True)
    names = [ns for ns in wanted if os.path.exists(os.path.join(NETNS_DIR, ns))]
    if not names:
        return
    kill_namespace_processes(names)
    # -force: carry on past a namespace that vanished meanwhile.
    ip(["-force", "-batch", "-"], "".join(f"netns delete {ns}\n" for ns in names), check=False)


def stale_namespaces() -> list[str]:
    """Namespaces of this project's labs whose creating process no longer exists."""
    found = []
    for name in list_namespaces():
        match = PREFIX_PATTERN.match(name)
        if match and not _alive(int(match.group(1))):
            found.append(name)
    return found


def sweep_stale() -> list[str]:
    """Remove namespaces left by dead lab runs (a killed test run, a crashed demo); return
    their names. Labs of live processes, e.g. a demo running beside the tests, are kept."""
    stale = stale_namespaces()
    delete_namespaces(stale)
    return stale
