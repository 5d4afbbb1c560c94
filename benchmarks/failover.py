"""Failover of the HA pair (docs/ha.md): how long until a new connection through the survivor
leaves from the reserved address, after each way the active can go.

Each trial builds a fresh two-node HA lab (lab/ha.py), lets router a win the election and b
become the ready standby, then takes a away and probes through b every few milliseconds (each
attempt waits at most 0.2 s) until the outside server sees the reserved address with b
holding it. Kinds:
- crash: SIGKILL of the router's processes (the router and its keepalived);
- node death: that, and a's macvlan0 and its node's interfaces deleted;
- LAN link down: a's node's LAN interface (macvlan0's parent) down, the pod network up;
- SIGTERM: the planned handover (a closes its gate and keepalived sends priority 0).
For a crash, also how long until a's pod, with nothing alive in it, stops answering ARP for the
address (the kernel's dead-man switch, ha/gate.py).
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

from egress_router.lab.ha import HaLab, wait_until

from .context import Bench, BenchError

KINDS = ("crash", "node death", "LAN link down", "SIGTERM")
SETTLE = 15.0


def trial(kind: str) -> dict[str, float]:
    with HaLab() as lab:
        lab.serve()
        lab.start_router("a")
        if not wait_until(lambda: lab.holders() == ["a"] and lab.is_ready("a"), SETTLE):
            raise BenchError(f"failover: router a did not become active:\n{lab.log('a')[-2000:]}")
        lab.start_router("b")
        if not wait_until(lambda: lab.is_ready("b"), SETTLE):
            raise BenchError(f"failover: router b did not become a ready standby:\n{lab.log('b')[-2000:]}")
        mac_a = lab.mac("a")
        stopping = None
        since = time.monotonic()
        if kind == "crash":
            lab.crash("a")
        elif kind == "node death":
            lab.node_death("a")
        elif kind == "LAN link down":
            lab.set_lan_link("a", False)
        else:
            stopping = threading.Thread(target=lab.terminate, args=("a",))
            stopping.start()
        took = lab.time_to_egress("b", since, limit=SETTLE)
        if took is None:
            raise BenchError(f"failover ({kind}): no egress through b within {SETTLE} s:\n{lab.log('b')[-2000:]}")
        out = {"egress_s": took}
        if kind == "crash":
            if wait_until(lambda: mac_a not in lab.arp_answers(0.05), SETTLE, 0.0):
                out["arp_quiet_s"] = time.monotonic() - since
        if stopping is not None:
            stopping.join()
        return out


def summary(values: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(values), "max_s": max(values), "min_s": min(values)}


def run(bench: Bench) -> dict[str, Any]:
    trials = bench.options.failover_trials
    kinds: dict[str, Any] = {}
    # Interleaved: a slow spell of the machine spoils one trial of each kind, not one kind.
    raw: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    for round_ in range(trials):
        for kind in KINDS:
            raw[kind].append(trial(kind))
        bench.say(f"failover: round {round_ + 1}/{trials} done")
    for kind, results in raw.items():
        egress = [r["egress_s"] for r in results]
        cell: dict[str, Any] = {"trials": len(results), "egress_s": egress, **summary(egress)}
        quiet = [r["arp_quiet_s"] for r in results if "arp_quiet_s" in r]
        if quiet:
            cell["arp_quiet"] = {"values_s": quiet, **summary(quiet)}
        kinds[kind] = cell
    return {"trials": trials, "kinds": kinds}
