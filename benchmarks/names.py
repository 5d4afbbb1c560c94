"""A named rule's cost per new connection next to a literal one's, in the same table.

Per N, the same N mappings are loaded twice: once as the router writes them for literal
addresses, once with the measured (last) mapping written as a name. For the named one the
router's own plan code builds the table with the name's answer in it (one address: the same
server), the same transaction the router applies after a lookup, and loads it with `nft -f`
over the literal run's network setup. So the path is the same but for the lookup: a port
missing from the six NAT maps, then the verdict map, the jump to the name's chain, and
`numgen` picking its address. The order alternates per round; the figure is the median of the
rounds' medians (connect to first byte, microseconds), and the ratio named / literal.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any

from egress_router.config import load_environment
from egress_router.dns import Answer
from egress_router.model import Name
from egress_router.nft import Transaction
from egress_router.plan import DEFAULT_FACTS, build_table

from . import stats
from .context import Bench
from .latency import Cell, measure, start_server
from .layouts import destination_text, measured_port

LITERAL, NAMED = "literal", "named"
NAME = Name("bench.example.test")


def named_script(bench: Bench, n: int) -> str:
    """The router's table for N mappings whose measured one is NAME, resolved to the server."""
    text = destination_text(n, bench.lan)
    lines = text.splitlines()
    port, protocol, _, remote = lines[-1].split()
    lines[-1] = f"{port} {protocol} {NAME} {remote}"
    config = load_environment({**bench.router_env(), "EGRESS_DESTINATION": "\n".join(lines) + "\n"})
    answer = Answer((ipaddress.ip_address(bench.lan.server),), time.time())
    tx = Transaction()
    tx.replace_table(build_table(config, DEFAULT_FACTS._replace(answers=((NAME, answer),))))
    return str(tx)


def run(bench: Bench) -> dict[str, Any]:
    options = bench.options
    server = start_server(bench)
    cells: dict[str, dict[int, Cell]] = {LITERAL: {}, NAMED: {}}
    try:
        for n in options.mappings:
            literal = bench.file(f"names-literal-{n}.txt", destination_text(n, bench.lan))
            named = bench.file(f"names-named-{n}.nft", named_script(bench, n))
            for round_ in range(options.rounds):
                order = (LITERAL, NAMED) if round_ % 2 == 0 else (NAMED, LITERAL)
                for layout in order:
                    bench.clear_tables()
                    bench.run_router(bench.destination_env(literal))
                    if layout == NAMED:
                        bench.exec("router", ["nft", "-f", named], timeout=300)
                    measure(bench, n, cells[layout].setdefault(n, Cell()))
                bench.say(f"names n={n} round {round_ + 1}/{options.rounds}: " + ", ".join(
                    f"{layout} {cells[layout][n].medians_us[-1]:.1f} us" for layout in (LITERAL, NAMED)
                ))
    finally:
        bench.clear_tables()
        bench.run_router(bench.router_env())  # the seed's rules, as the next section expects
        from .context import stop

        stop(server)
    out: dict[str, Any] = {"rounds": options.rounds, "connects_per_round": options.connects, "by_n": {}}
    for n in options.mappings:
        row = {layout: cells[layout][n].summary() for layout in (LITERAL, NAMED)}
        row["named_over_literal"] = stats.median(cells[NAMED][n].medians_us) / stats.median(cells[LITERAL][n].medians_us)
        row["port"] = measured_port(n)
        out["by_n"][str(n)] = row
    return out
