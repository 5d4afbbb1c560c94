"""`Lab`: the topology of docs/lab.md on the real kernel, built on enter and removed on exit.

    client ── eth0 router macvlan0 ┄ (macvlan on nic0) ── node nic0 ── br0 (lan) ── gw ── ext

Building is a handful of `ip -batch` calls (namespaces and veths from the host in one batch,
then one batch per namespace), so a lab is up in a fraction of a second. Every veth end is
created directly inside its namespace: nothing ever appears in the host's namespace, and two
labs (tests beside a demo) never collide on a name.

Teardown kills every process the lab started and every other process still in its namespaces,
and deletes the namespaces (their interfaces go with them). It runs on exit from the `with`
block whatever the reason (exception, Ctrl-C), and at interpreter exit for a lab left open.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Self

from ..schema import ROUTE_TABLE, RULE_PRIORITIES, TABLE_FAMILY, TABLE_NAME
from . import addresses as A
from .netns import delete_namespaces, in_netns, ip, ip_batch, read_sysctl, write_sysctls
from .probe import Probe, Stream, probe_tcp, probe_udp
from .servers import format_spec

# Where `python -m egress_router` finds this very checkout, installed or not.
SOURCE_ROOT = str(Path(__file__).resolve().parents[2])
TABLE = (TABLE_FAMILY, TABLE_NAME)


class LabError(RuntimeError):
    """The lab could not be built or used; the message says which step failed and why."""


class LabCommandError(subprocess.CalledProcessError):
    """A command run in a lab namespace failed; unlike its base class, it shows stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}: {(self.stderr or '').strip()}"


class Lab:
    """The lab topology. See the module docstring and docs/lab.md."""

    def __init__(self, ipv6: bool = False, macvlan: bool = True) -> None:
        self.ipv6 = ipv6
        self.with_macvlan = macvlan
        self.prefix = f"erl-{os.getpid()}-{secrets.token_hex(2)}-"
        self._processes: list[subprocess.Popen[str]] = []
        self._streams: list[Stream] = []
        self._macvlans = 0
        self._built = False

    # -- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self.build()
        except BaseException:  # also KeyboardInterrupt: never leave half a lab behind
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def build(self) -> None:
        # Registered first, so that even a build cut short is removed at interpreter exit.
        atexit.register(self.destroy)
        self._built = True
        ip_batch([f"netns add {self.ns(role)}" for role in A.ROLES])
        for role in A.ROLES:
            write_sysctls(self.ns(role), sysctls(role))
        ip_batch(host_links(self.ns))
        self._configure_namespaces()
        if self.with_macvlan:
            self.create_macvlan()
        self._wait_for_bridge()

    def _configure_namespaces(self) -> None:
        # The bridge last: a bridge port whose veth peer is already up forwards at once, while
        # one that gets its carrier later waits for the kernel's linkwatch, up to a second,
        # during which the LAN silently drops frames (a lost SYN, a lost announcement).
        self._configure_parallel([role for role in A.ROLES if role != "lan"])
        self._configure_parallel(["lan"])

    def _configure_parallel(self, roles: list[str]) -> None:
        # One `ip -n NS -batch` per namespace, all at once: they touch disjoint namespaces.
        running = [
            (
                role,
                subprocess.Popen(
                    ["ip", "-n", self.ns(role), "-batch", "-"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            )
            for role in roles
        ]
        failures = []
        for role, process in running:
            script = "".join(f"{line}\n" for line in namespace_setup(role, self.ipv6))
            _, err = process.communicate(script, timeout=30)
            if process.returncode != 0:
                failures.append(f"{role}: {err.strip()}")
        if failures:
            raise LabError("failed to configure the lab namespaces: " + "; ".join(failures))

    def _wait_for_bridge(self, timeout: float = 3.0) -> None:
        # A bridge port forwards only once the kernel's linkwatch has seen its carrier, which
        # it may batch for up to a second; until then the LAN drops every frame. Frames lost
        # there would look like router bugs (a lost announcement, a SYN retransmitted after a
        # second), so the lab is not handed out before both ports forward.
        deadline = time.monotonic() + timeout
        while True:
            done = ip(["-n", self.ns("lan"), "-j", "-d", "link", "show", "master", "br0"])
            states = {
                link["ifname"]: link.get("linkinfo", {}).get("info_slave_data", {}).get("state")
                for link in json.loads(done.stdout)
            }
            if set(states) == set(BRIDGE_PORTS) and all(s == "forwarding" for s in states.values()):
                return
            if time.monotonic() > deadline:
                raise LabError(f"the LAN bridge ports do not forward after {timeout}s: {states}")
            time.sleep(0.01)

    def destroy(self) -> None:
        """Remove everything this lab made; safe to call again, and from atexit."""
        if not self._built:
            return
        for stream in self._streams:
            stream.close()
        self._streams.clear()
        for process in self._processes:
            stop_process(process)
        self._processes.clear()
        delete_namespaces(self.ns(role) for role in A.ROLES)
        self._built = False
        atexit.unregister(self.destroy)

    # -- names and commands -------------------------------------------------------------------

    def ns(self, role: str) -> str:
        if role not in A.ROLES:
            raise ValueError(f"unknown lab role {role!r} (one of {', '.join(A.ROLES)})")
        return self.prefix + role

    def exec(
        self,
        role: str,
        argv: Sequence[str],
        check: bool = True,
        timeout: float = 10,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the namespace of `role` and wait for it (output captured, as text)."""
        done = subprocess.run(
            self._in_ns(role, argv),
            check=False,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=None if env is None else dict(env),
        )
        if check and done.returncode != 0:
            raise LabCommandError(done.returncode, list(argv), done.stdout, done.stderr)
        return done

    def popen(
        self, role: str, argv: Sequence[str], env: Mapping[str, str] | None = None, **kw: object
    ) -> subprocess.Popen[str]:
        """Start `argv` in the namespace of `role`; it is stopped when the lab is destroyed."""
        kw.setdefault("text", True)
        # Its own session, so that stopping it also stops whatever it started.
        process: subprocess.Popen[str] = subprocess.Popen(  # type: ignore[call-overload]
            self._in_ns(role, argv),
            env=None if env is None else dict(env),
            start_new_session=True,
            **kw,
        )
        self._processes.append(process)
        return process

    def _in_ns(self, role: str, argv: Sequence[str]) -> list[str]:
        # `ip netns exec` also gives the command the namespace's /sys, as a pod would see it.
        return ["ip", "netns", "exec", self.ns(role), *argv]

    def sysctl(self, role: str, key: str) -> str:
        """e.g. `lab.sysctl("router", "net/ipv4/ip_forward")`."""
        return read_sysctl(self.ns(role), key)

    # -- the router ---------------------------------------------------------------------------

    def router_env(self, env: Mapping[str, str]) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "PYTHONPATH": SOURCE_ROOT,
            **env,
        }

    def run_router(
        self, env: Mapping[str, str], timeout: float = 15
    ) -> subprocess.CompletedProcess[str]:
        """Run the router once in the router namespace with `env` (plus PATH, and PYTHONPATH
        pointing at this checkout); a non-zero exit is returned, not raised."""
        return self.exec(
            "router",
            [sys.executable, "-m", "egress_router"],
            check=False,
            timeout=timeout,
            env=self.router_env(env),
        )

    def start_router(self, env: Mapping[str, str], **kw: object) -> subprocess.Popen[str]:
        """Start the router in the background (legacy mode), stdout and stderr piped."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return self.popen(
            "router", [sys.executable, "-m", "egress_router"], env=self.router_env(env), **kw
        )

    def nft_table(self) -> str | None:
        """`nft list table inet egress_router` in the router namespace, None if there is none."""
        done = self.exec("router", ["nft", "list", "table", *TABLE], check=False)
        return done.stdout if done.returncode == 0 else None

    def reset_router(self) -> None:
        """Undo what a router run did (table, addresses, routes, forwarding), keeping
        macvlan0, so that tests sharing one lab start from the same state."""
        self.exec("router", ["nft", "delete", "table", *TABLE], check=False)
        if self.has_link("router", "macvlan0"):
            # Down takes the routes through macvlan0 with it; the router's rules and table go
            # by hand. The pod's own routes (its default route on eth0) stay.
            lines = [
                "address flush dev macvlan0",
                "link set macvlan0 down",
                *(f"rule del priority {p}" for p in RULE_PRIORITIES),
                *(f"-6 rule del priority {p}" for p in RULE_PRIORITIES),
                f"route flush table {ROUTE_TABLE}",
                f"-6 route flush table {ROUTE_TABLE}",
            ]
            ip(
                ["-n", self.ns("router"), "-force", "-batch", "-"],
                "".join(f"{x}\n" for x in lines),
                check=False,
            )
        elif self.with_macvlan:
            self.create_macvlan()
        write_sysctls(self.ns("router"), sysctls("router"))

    # -- interfaces ---------------------------------------------------------------------------

    def create_macvlan(self, name: str = "macvlan0") -> str:
        """Create a macvlan on node's nic0 (bridge mode) and move it into the router namespace
        as `name`, as the assign-macvlan annotation does on a real node; returns its MAC."""
        self._macvlans += 1
        temporary = f"mv{self._macvlans}"
        ip_batch(
            [
                f"link add {temporary} link nic0 type macvlan mode bridge",
                f"link set {temporary} netns {self.ns('router')}",
            ],
            self.ns("node"),
        )
        ip(["-n", self.ns("router"), "link", "set", temporary, "name", name])
        return self.mac("router", name)

    def delete_link(self, role: str, name: str) -> None:
        ip(["-n", self.ns(role), "link", "del", name], check=False)

    def has_link(self, role: str, name: str) -> bool:
        return ip(["-n", self.ns(role), "link", "show", "dev", name], check=False).returncode == 0

    def mac(self, role: str, name: str) -> str:
        done = ip(["-n", self.ns(role), "-o", "link", "show", "dev", name])
        words = done.stdout.split()
        return words[words.index("link/ether") + 1]

    # -- traffic ------------------------------------------------------------------------------

    def serve(
        self, endpoints: Iterable[tuple[str, int, str]], max_seconds: float = 3600
    ) -> subprocess.Popen[str]:
        """Start reporting servers in the ext namespace; return once all of them listen."""
        specs = [format_spec(address, port, protocol) for address, port, protocol in endpoints]
        argv = [
            sys.executable,
            "-m",
            "egress_router.lab.servers",
            "--max-seconds",
            str(max_seconds),
            *specs,
        ]
        env = {**os.environ, "PYTHONPATH": SOURCE_ROOT}
        process = self.popen(
            "ext",
            argv,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 10)
        line = process.stdout.readline() if ready else ""
        if line.strip() != "ready":
            stop_process(process)
            err = process.stderr.read() if process.stderr else ""
            raise LabError(
                f"failed to start servers {' '.join(specs)}: {err.strip() or 'not ready in 10s'}"
            )
        return process

    def socket(
        self, role: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
    ) -> socket.socket:
        """A socket that lives in the namespace of `role` (its routes, its addresses)."""
        return in_netns(self.ns(role), lambda: socket.socket(family, kind))

    def connect(
        self,
        port: int,
        protocol: str = "tcp",
        address: str | None = None,
        timeout: float = 3.0,
        payload: bytes = b"",
    ) -> Probe:
        """Connect from the client to the router's eth0 (or `address`) and report what the
        server at the other end saw."""
        target = address or A.ROUTER_IP
        family = socket.AF_INET6 if ":" in target else socket.AF_INET
        if protocol == "tcp":
            return probe_tcp(
                self.socket("client", family, socket.SOCK_STREAM), target, port, timeout, payload
            )
        if protocol == "udp":
            return probe_udp(
                self.socket("client", family, socket.SOCK_DGRAM), target, port, timeout, payload
            )
        raise ValueError(f"the lab can probe tcp and udp, not {protocol!r}")

    def open_stream(self, port: int, address: str | None = None, timeout: float = 3.0) -> Stream:
        """A long-lived TCP connection from the client through the router; closed on teardown.
        Raises OSError if it cannot be opened."""
        target = address or A.ROUTER_IP
        family = socket.AF_INET6 if ":" in target else socket.AF_INET
        stream = Stream(self.socket("client", family, socket.SOCK_STREAM), target, port, timeout)
        self._streams.append(stream)
        return stream


def stop_process(process: subprocess.Popen[str], grace: float = 1.0) -> None:
    """Stop a process the lab started (its whole session: what it forked goes too)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(grace)
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()


# -- the topology as data (pure: no I/O below) -----------------------------------------------


def sysctls(role: str) -> list[tuple[str, str]]:
    """Set before any interface exists, so that new interfaces inherit the defaults."""
    values = [
        # No duplicate address detection: nothing in the lab should wait a second for it.
        ("net/ipv6/conf/all/accept_dad", "0"),
        ("net/ipv6/conf/default/accept_dad", "0"),
    ]
    forward = "1" if role == "gw" else "0"
    # The router starts with forwarding off whatever the host has: the router must switch it
    # on itself, as on a node whose host setting it cannot count on.
    values += [("net/ipv4/ip_forward", forward), ("net/ipv6/conf/all/forwarding", forward)]
    return values


def host_links(n: Callable[[str], str]) -> list[str]:
    """The veths and the bridge, each end created directly in its namespace (`n`: role ->
    namespace name)."""
    return [
        f"link add nic0 netns {n('node')} type veth peer name node0 netns {n('lan')}",
        f"link add lan0 netns {n('gw')} type veth peer name gw0 netns {n('lan')}",
        f"link add ext0 netns {n('gw')} type veth peer name eth0 netns {n('ext')}",
        f"link add eth0 netns {n('router')} type veth peer name eth0 netns {n('client')}",
        # No multicast snooping: IPv6 neighbour discovery must flood without an MLD querier.
        f"link add br0 netns {n('lan')} type bridge mcast_snooping 0",
    ]


def _addr(address: str, prefix: int, dev: str) -> str:
    return f"address add {address}/{prefix} dev {dev}" + (" nodad" if ":" in address else "")


def pod_addresses(role: str, ipv6: bool) -> list[str]:
    """Addresses and routes that make up a namespace (without links being brought up)."""
    v4: dict[str, list[str]] = {
        "node": [_addr(A.NODE_IP, A.LAN_PREFIX, "nic0"), f"route replace default via {A.GATEWAY}"],
        "lan": [],
        # A pod's default route is on its pod network, as every CNI gives one; the router must
        # keep it. (Nothing answers at .1: the pod network leads nowhere but the client.)
        "router": [_addr(A.ROUTER_IP, A.POD_PREFIX, "eth0"), "route replace default via 198.51.100.1 dev eth0"],
        "client": [
            _addr(A.CLIENT_IP, A.POD_PREFIX, "eth0"),
            f"route replace default via {A.ROUTER_IP}",
        ],
        # Deliberately no route back to the pod network: only the router's SNAT brings replies home.
        "gw": [_addr(A.GATEWAY, A.LAN_PREFIX, "lan0"), _addr(A.OUTSIDE_GATEWAY, 24, "ext0")],
        "ext": [
            *(_addr(a, 24, "eth0") for a in A.EXTERNAL),
            f"route replace default via {A.OUTSIDE_GATEWAY}",
        ],
    }
    v6: dict[str, list[str]] = {
        "node": [_addr(A.NODE_IP6, A.V6_PREFIX, "nic0"), f"route replace default via {A.GATEWAY6}"],
        "lan": [],
        "router": [_addr(A.ROUTER_IP6, A.V6_PREFIX, "eth0"), "route replace default via 2001:db8:3::1 dev eth0"],
        "client": [
            _addr(A.CLIENT_IP6, A.V6_PREFIX, "eth0"),
            f"route replace default via {A.ROUTER_IP6}",
        ],
        "gw": [
            _addr(A.GATEWAY6, A.V6_PREFIX, "lan0"),
            _addr(A.OUTSIDE_GATEWAY6, A.V6_PREFIX, "ext0"),
        ],
        "ext": [
            *(_addr(a, A.V6_PREFIX, "eth0") for a in A.EXTERNAL6),
            f"route replace default via {A.OUTSIDE_GATEWAY6}",
        ],
    }
    lines = list(v4[role])
    if ipv6:
        lines += v6[role]
    # `address add` fails on an address that is there; the routes need the address first.
    return lines


BRIDGE_PORTS = ("node0", "gw0")
LINKS_UP = {
    "node": ["nic0"],
    "lan": ["node0", "gw0", "br0"],
    "router": ["eth0"],
    "client": ["eth0"],
    "gw": ["lan0", "ext0"],
    "ext": ["eth0"],
}


def namespace_setup(role: str, ipv6: bool) -> list[str]:
    """The `ip -batch` lines that configure one namespace."""
    lines = ["link set lo up"]
    if role == "lan":
        lines += ["link set node0 master br0", "link set gw0 master br0"]
    lines += [f"link set {dev} up" for dev in LINKS_UP[role]]
    return lines + pod_addresses(role, ipv6)
