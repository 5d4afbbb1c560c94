"""The HA table: a dead-man switch on the reserved address, and the standby's relay.

Two small tables beside the router's own, `inet egress_router_ha` and `arp egress_router_ha`,
each with a set `alive` that holds the egress interface's name with a timeout (`ALIVE_FOR`).
The active router refreshes it several times a second (`Refresher`); while it is absent,

- ARP requests for the reserved IPv4 address are dropped on the way in and ARP replies from it
  on the way out (the arp table), neighbour advertisements from the reserved IPv6 address are
  dropped on the way out,
- every packet to the reserved addresses from the egress interface is dropped,
- and a new connection that would leave by the egress interface is dropped (a standby that
  cannot relay it yet), before conntrack keeps it: its retransmission is decided afresh.

So the kernel itself stops answering for the address within `ALIVE_FOR` of the router's death,
though the pod's namespace, the address and the table outlive the process: nothing alive in
the pod has to remove anything.

The standby's relay (chain `relay`): connections that reach the standby's pod address are sent
on, same port, to the active's pod address, with the standby's pod address as their source so
that the replies come back through it. They carry `RELAY_CT_MARK`, which keeps the router's
table from marking them for the egress interface and lets its forward chain pass them. The
takeover empties the chain and opens the gate in one transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

from ..errors import ApplyError, EgressRouterError, SetupError
from ..model import RouterConfig
from ..process import run
from ..schema import RELAY_CT_MARK

HA_TABLE = "egress_router_ha"
ALIVE_SET = "alive"
ALIVE_FOR = 1.0  # seconds an element lives without a refresh
REFRESH_EVERY = 0.2  # seconds between refreshes: four may be lost before the gate closes
COUNTER = "relayed"
# The egress interface's address in every role (ha/controller.py): never answered for.
ANCHOR_ADDRESS = "192.0.0.8"
STEP = "apply the HA nftables table"


def _quote(name: str) -> str:
    return f'"{name}"'


def table_script(config: RouterConfig) -> str:
    """Both HA tables, created anew (any old ones are replaced whole, in the same
    transaction), with the gate closed and no relay."""
    egress = _quote(config.egress_interface)
    pod = _quote(config.pod_interface)
    v4 = [s.ip for s in config.sources if s.version == 4]
    v6 = [s.ip for s in config.sources if s.version == 6]
    alive = f"set {ALIVE_SET} {{ type ifname; flags timeout; }}"
    lines = [
        f"table inet {HA_TABLE} {{}}",
        f"delete table inet {HA_TABLE}",
        f"table arp {HA_TABLE} {{}}",
        f"delete table arp {HA_TABLE}",
        f"table inet {HA_TABLE} {{",
        f"\t{alive}",
        f"\tcounter {COUNTER} {{ }}",
        # Before the router's own DNAT (dstnat): a relayed connection is bound here first.
        "\tchain relay {",
        "\t\ttype nat hook prerouting priority dstnat - 10; policy accept;",
        "\t}",
        "\tchain relay_source {",
        "\t\ttype nat hook postrouting priority srcnat - 10; policy accept;",
        f"\t\toifname {pod} ct mark {RELAY_CT_MARK:#x} masquerade",
        "\t}",
        "\tchain gate_in {",
        "\t\ttype filter hook prerouting priority raw - 10; policy accept;",
        # VRRP stays out of conntrack, and so of the router's SNAT to the reserved address:
        # the adverts keep their pod-address source (their checksum covers it).
        f"\t\tiifname {egress} ip protocol vrrp notrack",
    ]
    lines += [f"\t\tiifname {egress} iifname != @{ALIVE_SET} ip daddr {a} drop" for a in v4]
    lines += [f"\t\tiifname {egress} iifname != @{ALIVE_SET} ip6 daddr {a} drop" for a in v6]
    lines += [f"\t\tiifname {egress} ip daddr {ANCHOR_ADDRESS} drop"]
    lines += [
        "\t}",
        "\tchain gate_out {",
        "\t\ttype filter hook output priority raw - 10; policy accept;",
        f"\t\toifname {egress} ip protocol vrrp notrack",
    ]
    lines += [
        f"\t\toifname {egress} oifname != @{ALIVE_SET} ip6 saddr {a} icmpv6 type nd-neighbor-advert drop"
        for a in v6
    ]
    lines += [
        "\t}",
        # Gate closed, no address: a redirected connection that would leave by the egress
        # interface (IPv6 before the relay knows the active's IPv6 pod address, IPv4 before an
        # active is heard, or in the moment of a handover) is dropped rather than sent out from
        # an address another replica holds, whose replies never come back here. Dropped in
        # the forward hook, before conntrack keeps the flow: the client's retransmission is
        # NATed afresh, and relayed once the relay is in place.
        "\tchain unserved {",
        "\t\ttype filter hook forward priority filter - 10; policy accept;",
        f"\t\tiifname {pod} oifname {egress} oifname != @{ALIVE_SET} ct state new drop",
    ]
    lines += ["\t}", "}", f"table arp {HA_TABLE} {{", f"\t{alive}"]
    lines += ["\tchain gate_in {", "\t\ttype filter hook input priority 0; policy accept;"]
    lines += [f"\t\tiifname {egress} iifname != @{ALIVE_SET} arp daddr ip {a} drop" for a in v4]
    lines += [f"\t\tiifname {egress} arp daddr ip {ANCHOR_ADDRESS} drop"]
    lines += ["\t}", "\tchain gate_out {", "\t\ttype filter hook output priority 0; policy accept;"]
    lines += [f"\t\toifname {egress} oifname != @{ALIVE_SET} arp saddr ip {a} drop" for a in v4]
    lines += ["\t}", "}"]
    return "".join(f"{line}\n" for line in lines)


def alive_script(config: RouterConfig) -> str:
    """Open the gate for another `ALIVE_FOR` seconds (a flush, then a fresh element: one
    transaction, never a moment without it)."""
    element = f'{{ {_quote(config.egress_interface)} timeout {int(ALIVE_FOR * 1000)}ms }}'
    return "".join(
        f"flush set {family} {HA_TABLE} {ALIVE_SET}\nadd element {family} {HA_TABLE} {ALIVE_SET} {element}\n"
        for family in ("inet", "arp")
    )


def closed_script() -> str:
    """Close the gate at once."""
    return "".join(f"flush set {family} {HA_TABLE} {ALIVE_SET}\n" for family in ("inet", "arp"))


def relay_script(config: RouterConfig, active: IPv4Address | None, active6: IPv6Address | None = None) -> str:
    """The relay chain for `active` (None: no relay), and for IPv6 connections to `active6`,
    the active's IPv6 pod address (None: IPv6 is not relayed)."""
    lines = [f"flush chain inet {HA_TABLE} relay"]
    port = config.served_http_port
    keep = f"tcp dport != {port} " if port else ""
    for family, word, target in (("ipv4", "ip", active), ("ipv6", "ip6", active6 if active else None)):
        if target is None:
            continue
        lines.append(
            f"add rule inet {HA_TABLE} relay iifname {_quote(config.pod_interface)} meta nfproto {family} "
            f"fib daddr type local {keep}meta l4proto {{ tcp, udp, sctp }} "
            f"ct mark set {RELAY_CT_MARK:#x} counter name {COUNTER} dnat {word} to {target}"
        )
    return "".join(f"{line}\n" for line in lines)


def apply(script: str) -> None:
    """One `nft -f` transaction. nft's refusal is explained and classified by the router's own
    nft helpers (its first error line, NET_ADMIN or a missing module spelled out), and a
    missing nft is a `SetupError` with its hint, as for the router's table."""
    from ..nft.cli import NFT_HINT, explain_nft_error, nft_error_kind  # HA only

    try:
        done = run(["nft", "-f", "-"], script)
    except FileNotFoundError:
        raise SetupError("the nft command was not found (nft)", NFT_HINT) from None
    if done.returncode != 0:
        raise ApplyError(STEP, explain_nft_error(done.stderr), nft_error_kind(done.stderr))


def delete_script() -> str:
    return "".join(
        f"table {family} {HA_TABLE} {{}}\ndelete table {family} {HA_TABLE}\n" for family in ("inet", "arp")
    )


def relayed_connections() -> int | None:
    """The relay's counter: connections this replica relayed as a standby."""
    done = run(["nft", "list", "counter", "inet", HA_TABLE, COUNTER])
    if done.returncode != 0:
        return None
    words = done.stdout.split()
    try:
        return int(words[words.index("packets") + 1])
    except (ValueError, IndexError):
        return None


def kernel_role() -> str:
    """This replica's HA role as the kernel shows it: `active` while the gate is open (the
    router alive and holding the address), `standby` while it is closed, `none` without the
    HA table."""
    done = run(["nft", "list", "set", "inet", HA_TABLE, ALIVE_SET])
    if done.returncode != 0:
        return "none (no HA table)"
    return "active (holds the reserved address)" if "elements" in done.stdout else "standby"


class Refresher:
    """A thread that keeps the gate open while `active` is set: the one piece of the router
    whose silence closes it. A failed refresh is reported through `failed`, once until one
    succeeds again (the controller then puts the HA tables back)."""

    def __init__(self, config: RouterConfig, failed: Callable[[str], None]) -> None:
        self.script = alive_script(config)
        self.failed = failed
        self.active = threading.Event()
        self.lock = threading.Lock()  # held across a refresh: `pause` waits for one under way
        self.failing = False
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="ha-gate", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            self.active.wait(REFRESH_EVERY)
            if self.stopping.is_set():
                return
            with self.lock:
                if self.active.is_set():
                    try:
                        apply(self.script)
                    except (EgressRouterError, OSError) as error:
                        if not self.failing:  # once, until a refresh succeeds again
                            self.failed(str(error))
                        self.failing = True
                    else:
                        self.failing = False
            self.stopping.wait(REFRESH_EVERY)

    def pause(self) -> None:
        """No refresh from now on (one under way is waited for): the gate can be closed."""
        with self.lock:
            self.active.clear()

    def stop(self) -> None:
        self.stopping.set()
        self.pause()
        if self.thread.is_alive():
            self.thread.join(2)
