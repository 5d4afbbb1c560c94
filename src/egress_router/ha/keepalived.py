"""keepalived, the VRRP engine: its configuration, written from the router's, and keepalived
itself as a supervised child of the router.

Choices (docs/ha.md says why):
- One VRRPv3 instance over IPv4 elects the active replica for every family: keepalived holds
  none of the reserved addresses (its one `virtual_ipaddress` is a placeholder on lo, as
  VRRPv3 instances need one), the router adds the IPv4 and the IPv6 source together
  when it becomes active, so the families cannot end up on two replicas.
- Every replica starts as BACKUP with the same priority and `nopreempt`: a replica that comes
  back never takes the address back.
- Adverts every `ADVERT_INTERVAL` s: a dead active is noticed after about 3.3 intervals.
- The adverts' source is the pod's own eth0 address (`mcast_src_ip`, or `unicast_src_ip`
  with peers): the standby holds no address on the egress interface, and the standby learns
  the active's pod address, which it relays to, from the adverts. Multicast adverts go on the
  LAN, so that an active cut off from the LAN is replaced; unicast ones (where the LAN carries
  no multicast) go over the pod network, and the egress interface is tracked instead.
- keepalived tells the router its state through a FIFO (`notify_fifo`).
- It runs with `--dont-fork` under `setpriv --pdeathsig`: when the router dies, for whatever
  reason, the kernel signals keepalived, which stops advertising (with SIGTERM it first sends a
  priority-0 advert, and the standby takes over at once).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from ipaddress import IPv4Address

from ..errors import SetupError
from ..model import RouterConfig
from .gate import ANCHOR_ADDRESS
from .settings import HaConfig

PLACEHOLDER = ANCHOR_ADDRESS  # the same dummy address, on another interface (lo)
ADVERT_INTERVAL = 0.1  # seconds (VRRPv3 counts in centiseconds)
PRIORITY = 100
KEEPALIVED = "keepalived"
SETPRIV = "setpriv"
KEEPALIVED_HINT = "install keepalived in the image (apt-get install keepalived)"
STOP_GRACE = 2.0  # seconds keepalived gets to send its priority-0 advert and exit


def render(config: RouterConfig, ha: HaConfig, source: IPv4Address, fifo: str) -> str:
    """keepalived.conf for this replica, whose pod address is `source`."""
    lines = [
        "# written by egress-router; keepalived elects, the router holds the address",
        "global_defs {",
        f"\trouter_id egress-router-{ha.vrid}",
        "\tvrrp_version 3",
        "\tscript_user root",  # no script runs: this only keeps keepalived from looking for its user
        f"\tnotify_fifo {fifo}",
        "}",
        f"vrrp_instance {ha.instance} {{",
        "\tstate BACKUP",
        f"\tinterface {advert_interface(config, ha)}",
        f"\tvirtual_router_id {ha.vrid}",
        f"\tpriority {PRIORITY}",
        f"\tadvert_int {ADVERT_INTERVAL}",
        "\tnopreempt",
    ]
    if ha.peers:
        # Unicast adverts go over the pod network, between the pods' own addresses; losing
        # the egress interface's carrier is a fault all the same.
        lines += [f"\tunicast_src_ip {source}", "\tunicast_peer {"]
        lines += [f"\t\t{peer}" for peer in ha.peers if peer != source]
        lines += ["\t}", "\ttrack_interface {", f"\t\t{config.egress_interface}", "\t}"]
    else:
        lines.append(f"\tmcast_src_ip {source}")
    # VRRPv3 instances need an address: keepalived gets a placeholder on lo, the IPv4 dummy
    # address (RFC 7600), which it adds and removes as it likes; the router holds the real one.
    # Adverts that carry any other address come from another VRRP router with our VRID.
    lines += ["\tvirtual_ipaddress {", f"\t\t{PLACEHOLDER}/32 dev lo scope host", "\t}", "}"]
    return "".join(f"{line}\n" for line in lines)


def advert_interface(config: RouterConfig, ha: HaConfig) -> str:
    """Where the adverts go: multicast on the LAN (the egress interface), unicast to the peers'
    pod addresses over the pod network (the pod interface)."""
    return config.pod_interface if ha.peers else config.egress_interface


def parse_fifo_line(line: str) -> tuple[str, str] | None:
    """(instance, state) of a notify_fifo line such as `INSTANCE "egress_router_5" MASTER 100`;
    None for other lines."""
    words = line.split()
    if len(words) < 3 or words[0] != "INSTANCE":
        return None
    return words[1].strip('"'), words[2]


class Keepalived:
    """keepalived as the router's child: started, watched, stopped."""

    def __init__(self, parent: str | None = None) -> None:
        self.directory = tempfile.mkdtemp(prefix="egress-router-ha-", dir=parent or _runtime_dir())
        self.fifo = os.path.join(self.directory, "state.fifo")
        os.mkfifo(self.fifo, 0o600)
        self.process: subprocess.Popen[bytes] | None = None
        self.terminated = False

    def configure(self, text: str) -> str:
        path = os.path.join(self.directory, "keepalived.conf")
        with open(path, "w") as handle:
            handle.write(text)
        return path

    def start(self, conf_text: str) -> None:
        """Start keepalived (from the main thread: the parent-death signal follows the thread
        that started it)."""
        for program, hint in ((KEEPALIVED, KEEPALIVED_HINT), (SETPRIV, "install util-linux (setpriv)")):
            if shutil.which(program) is None:
                raise SetupError(f"HA needs the {program} command, which was not found", hint)
        path = self.configure(conf_text)
        argv = [
            SETPRIV, "--pdeathsig", "TERM", "--",
            KEEPALIVED, "--dont-fork", "--vrrp", "--log-console", "--no-syslog", "--dont-respawn",
            "--use-file", path,
            "--pid", os.path.join(self.directory, "keepalived.pid"),
            "--vrrp_pid", os.path.join(self.directory, "vrrp.pid"),
        ]
        # Its log (the state changes, its own errors) goes where the router's goes.
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=2)

    def exited(self) -> int | None:
        """keepalived's exit status if it has ended, else None."""
        return None if self.process is None else self.process.poll()

    def terminate(self) -> None:
        """SIGTERM, without waiting: keepalived sends a priority-0 advert (the peer takes over
        at once), then exits in its own time."""
        process = self.process
        if process is not None and process.poll() is None and not self.terminated:
            process.send_signal(signal.SIGTERM)
            self.terminated = True

    def stop(self) -> None:
        """`terminate`, then wait for keepalived to exit; SIGKILL if it takes too long."""
        process = self.process
        if process is not None and process.poll() is None:
            self.terminate()
            try:
                process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_GRACE)
        self.process = None
        self.terminated = False

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _runtime_dir() -> str | None:
    return "/run" if os.access("/run", os.W_OK) else None
