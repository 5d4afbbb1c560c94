"""What to remove from a router namespace to make it a new pod again, decided from `ip -j`
listings. Pure: topology.py lists, calls these, and runs the `ip -batch` lines they return.

A new pod has the kernel's default rules only, no routing table but main and local, and in main
only its CNI's routes (re-added by the caller) and the kernel's routes of eth0's addresses.
"""

from __future__ import annotations

from typing import Any

# (priority, table) of the rules a new namespace starts with, per family.
DEFAULT_RULES = {
    4: {(0, "local"), (32766, "main"), (32767, "default")},
    6: {(0, "local"), (32766, "main")},
}
KERNEL_TABLES = {"main", "local", "default", "254", "255", "253"}
KEPT_DEVICES = {"eth0", "lo"}

Listing = list[dict[str, Any]]


def rule_deletions(rules: Listing, family: int) -> list[str]:
    """`rule del` lines for every rule that a new namespace does not have (one line per rule:
    `rule del priority P` takes the first rule at P, and several may share a priority)."""
    return [
        f"rule del priority {rule['priority']}"
        for rule in rules
        if (rule.get("priority", 0), str(rule.get("table", "main"))) not in DEFAULT_RULES[family]
    ]


def extra_tables(routes: Listing) -> list[str]:
    """Routing tables other than the kernel's (`ip -j route show table all`), e.g. the
    router's own, as `route flush table T` lines."""
    tables = {str(route["table"]) for route in routes if "table" in route}
    return [f"route flush table {table}" for table in sorted(tables - KERNEL_TABLES)]


def route_deletions(routes: Listing, family: int) -> list[str]:
    """`route del` lines for main-table routes a new pod does not have: anything but the
    kernel's routes on eth0 and lo. The CNI's own routes go too; the caller puts them back."""
    lines = []
    for route in routes:
        if route.get("protocol") == "kernel" and route.get("dev") in KEPT_DEVICES:
            continue
        dst = route.get("dst", "default")
        if dst == "default":
            dst = "::/0" if family == 6 else "0.0.0.0/0"
        words = ["route del", route.get("type", "unicast"), dst, "table main"]
        if "dev" in route:
            words.append(f"dev {route['dev']}")
        if "gateway" in route:
            words.append(f"via {route['gateway']}")
        if "metric" in route:
            words.append(f"metric {route['metric']}")
        lines.append(" ".join(words))
    return lines
