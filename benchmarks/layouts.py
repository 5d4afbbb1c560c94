"""The rule sets compared: this project's maps, one linear rule per mapping, and the floor.

All three redirect local port `measured_port(n)` on the router's pod address to the same server,
so a connection measured against any of them takes the same path but for the NAT lookup.
"""

from __future__ import annotations

from dataclasses import dataclass

from egress_router.schema import FWMARK

FIRST_LOCAL_PORT = 1024
FIRST_REMOTE_PORT = 10000
# The measured (last) mapping always goes here, so one server serves every N; the other
# mappings use 10000, 10001, ...: distinct remote ports, all below this one up to 50,000 rules.
SERVER_PORT = 60000
MAX_MAPPINGS = SERVER_PORT - FIRST_REMOTE_PORT

PROJECT = "maps (egress-router)"
# The same router in `legacy` mode, whose table also counts connections and bytes per port.
COUNTING = "maps, counting (legacy)"
LINEAR = "linear (one rule per mapping)"
FLOOR = "floor (two hand-written rules)"
LAYOUTS = (PROJECT, COUNTING, LINEAR, FLOOR)

# The benchmark's own tables; never the router's.
LINEAR_TABLE = "inet egress_bench_linear"
FLOOR_TABLE = "inet egress_bench_floor"


@dataclass(frozen=True)
class Lan:
    """The lab addresses the rule sets name."""

    router: str  # the router pod's cluster-side address (eth0), where clients connect
    server: str  # where every mapping points (ext)
    source: str  # the reserved source address
    gateway: str = ""  # the LAN's gateway, for the floor's route
    egress_interface: str = "macvlan0"


def measured_port(n: int) -> int:
    return FIRST_LOCAL_PORT + n - 1


def mappings(n: int) -> list[tuple[int, int]]:
    """(local port, remote port) pairs, the measured one last."""
    if not 1 <= n <= MAX_MAPPINGS:
        raise ValueError(f"between 1 and {MAX_MAPPINGS} mappings, not {n}")
    pairs = [(FIRST_LOCAL_PORT + i, FIRST_REMOTE_PORT + i) for i in range(n - 1)]
    pairs.append((measured_port(n), SERVER_PORT))
    return pairs


def destination_text(n: int, lan: Lan) -> str:
    """EGRESS_DESTINATION lines for the router."""
    return "".join(f"{local} tcp {lan.server} {remote}\n" for local, remote in mappings(n))


def linear_script(n: int, lan: Lan) -> str:
    """The OpenShift image's layout in nft: one DNAT rule per destination line, walked in
    order by every new connection, the measured mapping last. It marks what it redirected as
    the router does, so both leave by the router's policy routing: they differ in the lookup
    alone."""
    rules = "".join(
        f"\t\ttcp dport {local} dnat ip to {lan.server}:{remote}\n" for local, remote in mappings(n)
    )
    return _table(LINEAR_TABLE, rules, lan, _mark_chain())


def floor_script(n: int, lan: Lan) -> str:
    """The least NAT that makes the measured connection work: one DNAT rule, one SNAT rule,
    and no mark: the floor goes out by a plain route to the server (`floor_route`), without
    policy routing."""
    return two_rule_script(measured_port(n), SERVER_PORT, lan)


def two_rule_script(local: int, remote: int, lan: Lan) -> str:
    rule = f"\t\ttcp dport {local} dnat ip to {lan.server}:{remote}\n"
    return _table(FLOOR_TABLE, rule, lan)


def marked_script(local: int, remote: int, lan: Lan) -> str:
    """The floor's two rules and the router's mark: its connections leave by the router's
    policy routing (the rule and table its run set up), not by a plain route. Against the floor
    this is the cost of the mark and the policy routing and of nothing else."""
    rule = f"\t\ttcp dport {local} dnat ip to {lan.server}:{remote}\n"
    return _table(FLOOR_TABLE, rule, lan, _mark_chain())


def _mark_chain() -> str:
    """What the router marks, as the router marks it (see its `redirected` chain)."""
    return (
        "\tchain redirected {\n\t\ttype filter hook prerouting priority dstnat + 10; policy accept;\n"
        f"\t\tct direction original ct status dnat meta mark set {FWMARK:#x}\n\t}}\n"
    )


def floor_route(lan: Lan) -> str:
    """The floor's way out: a main-table route to the server through the LAN's gateway, as the
    router had before it routed by policy."""
    # onlink: the main table has no route to the LAN (the router adds its address without one).
    return f"{lan.server}/32 via {lan.gateway} dev {lan.egress_interface} onlink"


def _table(ref: str, prerouting: str, lan: Lan, extra: str = "") -> str:
    # "add" then "delete" makes the script safe to run on a kernel with or without the table.
    return (
        f"add table {ref}\ndelete table {ref}\n"
        f"table {ref} {{\n"
        "\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
        f"{prerouting}\t}}\n"
        "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        f'\t\toifname "{lan.egress_interface}" snat ip to {lan.source}\n\t}}\n'
        f"{extra}}}\n"
    )


def clear_script(*refs: str) -> str:
    """Delete tables whether or not they exist."""
    return "".join(f"add table {ref}\ndelete table {ref}\n" for ref in refs)
