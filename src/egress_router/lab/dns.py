"""A real DNS server for the lab: dnsmasq (Debian's dnsmasq-base), in a pod-network namespace
(the client pod's, as cluster DNS is a pod on the pod network), answering only from a hosts
file the tests rewrite (`set`), with a TTL of `ttl` seconds.

The router pods' resolver points at it (`routers`: the router namespace of `Lab`, or both of
`HaLab`'s): `ip netns exec` mounts /etc/netns/<ns>/resolv.conf over /etc/resolv.conf, and that
file (with a Kubernetes-like search list and ndots:5, which
the router must not apply) is written here and removed with the namespace
(`netns.delete_namespaces`), also when a test fails.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

from .netns import ETC_NETNS
from .topology import Lab, LabError, stop_process

DOMAIN = "example.test"  # every lab name is under it: dnsmasq answers NXDOMAIN for the rest


class Namespaces(Protocol):
    """What the DNS server needs of a lab (`Lab`, `HaLab`)."""

    def ns(self, role: str) -> str: ...

    def popen(self, role: str, argv: list[str], env: Mapping[str, str] | None = None,
              **kw: object) -> subprocess.Popen[str]: ...

    def exec(self, role: str, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]: ...


class DnsServer:
    """dnsmasq on `role` at `address`, port 53; the resolv.conf of each namespace of `routers`
    names it."""

    def __init__(self, lab: Lab | Namespaces, address: str, role: str = "client", ttl: int = 1,
                 routers: Iterable[str] = ("router",)) -> None:
        self.lab, self.address, self.role, self.ttl = lab, address, role, ttl
        self.dir = Path(tempfile.mkdtemp(prefix="erl-dns-"))
        os.chmod(self.dir, 0o755)  # dnsmasq reads it as nobody
        self.hosts = self.dir / "hosts"
        self.log = self.dir / "dnsmasq.log"
        self.process: subprocess.Popen[str] | None = None
        self.resolvs = [Path(ETC_NETNS) / lab.ns(router) / "resolv.conf" for router in routers]
        self.resolv = self.resolvs[0]

    def start(self, records: Mapping[str, Iterable[str]]) -> DnsServer:
        self._write(records)
        for resolv in self.resolvs:
            resolv.parent.mkdir(parents=True, exist_ok=True)
            resolv.write_text(
                f"search default.svc.cluster.local svc.cluster.local cluster.local\n"
                f"nameserver {self.address}\noptions ndots:5\n"
            )
        argv = [
            "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
            f"--addn-hosts={self.hosts}", f"--local=/{DOMAIN}/", f"--local-ttl={self.ttl}",
            f"--listen-address={self.address}", "--bind-interfaces", "--port=53", "--pid-file=",
            "--log-queries", f"--log-facility={self.log}", "--cache-size=0",
        ]
        self.process = self.lab.popen(self.role, argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_listening()
        return self

    def _wait_listening(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                err = self.process.stderr.read() if self.process.stderr else ""
                raise LabError(f"dnsmasq exited: {err.strip()}")
            done = self.lab.exec(self.role, ["ss", "-Hlun", f"src {self.address}:53"], check=False)
            if done.stdout.strip():
                return
            select.select([], [], [], 0.02)
        raise LabError("dnsmasq does not listen after 5 s")

    def _write(self, records: Mapping[str, Iterable[str]]) -> None:
        lines = [f"{address} {name}\n" for name, addresses in records.items() for address in addresses]
        temporary = self.hosts.with_suffix(".new")
        temporary.write_text("".join(lines))
        os.chmod(temporary, 0o644)
        temporary.replace(self.hosts)

    def set(self, records: Mapping[str, Iterable[str]]) -> None:
        """Replace every record (dnsmasq re-reads its hosts file on SIGHUP)."""
        self._write(records)
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGHUP)

    def pause(self) -> None:
        """Stop answering (the process is stopped: queries time out)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def queries(self) -> list[str]:
        """dnsmasq's log lines of the queries it received."""
        try:
            return [line for line in self.log.read_text().splitlines() if " query[" in line]
        except OSError:
            return []

    def close(self) -> None:
        if self.process is not None:
            self.resume()
            stop_process(self.process)
            self.process = None
        for resolv in self.resolvs:
            resolv.unlink(missing_ok=True)
            for directory in (resolv.parent, resolv.parent.parent):
                try:
                    directory.rmdir()  # only when empty: another run's files stay
                except OSError:
                    pass
        for path in (self.hosts, self.log, self.hosts.with_suffix(".new")):
            path.unlink(missing_ok=True)
        self.dir.rmdir()
