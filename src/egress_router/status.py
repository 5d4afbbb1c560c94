"""`egress-router status [--json]`: the live state, read from the kernel (not from the config).

What an operator asks when traffic does not flow: is the egress interface up with the reserved
address, where does the default route go, which mappings are loaded and how much has each
carried, is there a fallback. Run it in the router's container (`kubectl exec`); it needs the
privileges the router has, since listing nftables tables does.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

from .config import EGRESS_INTERFACE, POD_INTERFACE
from .metrics import traffic
from .model import DEFAULT_EGRESS_INTERFACE, DEFAULT_POD_INTERFACE
from .network import NetBackend
from .network.state import Scope
from .nft.listing import NftTableReader, TableReader
from .schema import ROUTE_TABLE, TABLE_FAMILY, TABLE_NAME

USAGE = "usage: egress-router status [--json]\n"


def main(args: list[str], env: Mapping[str, str]) -> int:
    if args not in ([], ["--json"]):
        sys.stderr.write(USAGE)
        return 2
    from .network.rtnl import RtNetlink

    interface = env.get(EGRESS_INTERFACE) or DEFAULT_EGRESS_INTERFACE
    pod = env.get(POD_INTERFACE) or DEFAULT_POD_INTERFACE
    state = gather(Scope(interface, pod), RtNetlink(), NftTableReader())
    if env.get("EGRESS_ROUTER_HA", "").strip():
        from .ha.gate import kernel_role

        state["ha_role"] = kernel_role()
    sys.stdout.write(json.dumps(state, indent=2) + "\n" if args else render(state))
    return 0 if state["table"] is not None and state["interface"]["exists"] else 1


def gather(scope: Scope, net: NetBackend, reader: TableReader) -> dict[str, Any]:
    interface = scope.interface
    now = net.read(scope)
    link = now.link
    # The default routes of the router's own table: where redirected connections leave.
    routes = [r for r in now.routes if r.destination == "default" and r.table == ROUTE_TABLE]
    table = reader.read_table(TABLE_FAMILY, TABLE_NAME)
    mappings: list[dict[str, Any]] = []
    fallbacks: list[dict[str, Any]] = []
    if table is not None:
        for labels, connections, moved in traffic(table):
            row = {**labels, "connections": connections, "bytes": moved}
            (fallbacks if labels["port"] == "*" else mappings).append(row)
    names: dict[tuple[str, int], dict[str, Any]] = {}
    for chain in (table.names.values() if table is not None else ()):
        names.setdefault((chain.name, chain.family), {
            "name": chain.name, "family": f"ipv{chain.family}", "addresses": list(chain.addresses), "since": chain.since,
        })
    return {
        "names": sorted(names.values(), key=lambda n: (n["name"], n["family"])),
        "interface": {
            "name": interface,
            "exists": link is not None,
            "up": bool(link and link.up),
            "carrier": bool(link and link.carrier),
            "mac": link.mac if link else None,
            "addresses": [str(a) for a in now.ips()],
        },
        "routes": [
            {"family": f"ipv{r.family}", "gateway": r.via, "device": r.dev} for r in routes
        ],
        "rules": [f"{'ipv6' if r.family == 6 else 'ipv4'} {r}" for r in now.rules],
        "table": None if table is None else f"{TABLE_FAMILY} {TABLE_NAME}",
        "mappings": mappings,
        "fallbacks": fallbacks,
    }


def render(state: dict[str, Any]) -> str:
    i = state["interface"]
    if i["exists"]:
        link = "up" if i["up"] else "DOWN"
        link += "" if i["carrier"] or not i["up"] else " (no carrier)"
        addresses = ", ".join(i["addresses"]) or "no address"
        lines = [f"interface  {i['name']}: {link}, source {addresses}, mac {i['mac']}"]
    else:
        lines = [f"interface  {i['name']}: MISSING"]
    if "ha_role" in state:
        lines.append(f"ha role    {state['ha_role']}")
    for r in state["routes"] or [{"family": "any", "gateway": None, "device": None}]:
        where = f"via {r['gateway']} dev {r['device']}" if r["gateway"] else "NONE"
        lines.append(f"gateway    {r['family']} default route {where} (table {ROUTE_TABLE})")
    for rule in state["rules"] or ["NONE: no connection leaves through the egress interface"]:
        lines.append(f"rule       {rule}")
    if state["table"] is None:
        lines.append(f"table      {TABLE_FAMILY} {TABLE_NAME}: MISSING (no redirection)")
        return "\n".join(lines) + "\n"
    lines.append(f"table      {state['table']}")
    rows = [("PROTOCOL", "PORT", "DESTINATION", "CONNECTIONS", "BYTES")]
    for m in state["mappings"] + state["fallbacks"]:
        where = m["destination"] + (" (fallback, same port)" if m["port"] == "*" else "")
        rows.append((m["protocol"], m["port"], where, str(m["connections"]), str(m["bytes"])))
    widths = [max(len(row[c]) for row in rows) for c in range(5)]
    lines.append("")
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    if not state["fallbacks"]:
        lines.append("no fallback: connections to other ports are refused")
    if state["names"]:
        import time

        lines.append("")
        for n in state["names"]:
            if n["addresses"]:
                age = _age(time.time() - n["since"])
                lines.append(f"name       {n['name']} {n['family']}: {', '.join(n['addresses'])} (since {age} ago)")
            else:
                lines.append(f"name       {n['name']} {n['family']}: NO ADDRESS yet (its ports are refused)")
    return "\n".join(lines) + "\n"


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"
