"""What the daemon counts, and its translation to Prometheus metrics at scrape time.

`Stats` is plain Python, written by the daemon's loop and read by the HTTP thread: the daemon
keeps it even when the HTTP port is 0, without importing prometheus_client. Traffic counters
are not kept here at all: the kernel counts every redirected connection and byte in the
table's maps, and `collect` reads them when Prometheus asks, so they cost nothing between
scrapes and survive a daemon restart as long as the table does. A table rebuilt whole (a drift
repair, a changed structure) restarts them at 0; `Stats` keeps an offset per series so that
what is exported never goes down.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import EgressRouterError
from .nft.listing import TableReader, TableState
from .schema import (
    FAMILIES,
    PROTOCOLS,
    TABLE_FAMILY,
    TABLE_NAME,
    bytes_set_name,
    connections_set_name,
    fallback_counter_name,
    map_name,
)

# An apply is an nftables transaction and a few rtnetlink messages: milliseconds, more for huge maps.
APPLY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PREFIX = "egress_router_"
CONNTRACK = "/proc/sys/net/netfilter/nf_conntrack_"


@dataclass
class Stats:
    reloads: dict[str, int] = field(default_factory=lambda: {"success": 0, "failure": 0})
    last_reload_success: float = 0.0  # Unix time; the start-up apply counts
    drift_repairs: int = 0
    address_conflicts: int = 0  # other hosts found answering for the source address
    ready: bool = False  # the current config is applied and the last check found it in place
    serves: bool = True  # HA: every connection that reaches this replica is served (ha/)
    ha: Any = None  # HA: its metrics (ha.controller.HaStats), None without HA
    last_tick: float = field(default_factory=time.monotonic)  # the loop's heartbeat
    apply_buckets: list[int] = field(default_factory=lambda: [0] * len(APPLY_BUCKETS))
    apply_count: int = 0
    apply_sum: float = 0.0
    # Per traffic series, (kind, protocol, port, destination): the kernel's value last read,
    # and what the kernel's counters lost to tables rebuilt since this process started.
    traffic_seen: dict[tuple[str, ...], int] = field(default_factory=dict)
    traffic_offset: dict[tuple[str, ...], int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    names: Any = None  # the `dns.follow.Follower` of a configuration with names
    names_ready: bool = True  # every destination name's addresses are in the kernel

    @property
    def serving(self) -> bool:
        """/readyz: the configuration is applied, every destination name resolved once, and
        (HA) every connection that reaches this replica is served."""
        return self.ready and self.names_ready and self.serves

    def observe_apply(self, seconds: float) -> None:
        with self.lock:
            self.apply_count += 1
            self.apply_sum += seconds
            for i, bound in enumerate(APPLY_BUCKETS):
                if seconds <= bound:
                    self.apply_buckets[i] += 1

    def reloaded(self, ok: bool) -> None:
        with self.lock:
            self.reloads["success" if ok else "failure"] += 1
            if ok:
                self.last_reload_success = time.time()

    def counted(self, rows: Iterable[tuple[dict[str, str], int, int]]) -> list[tuple[dict[str, str], int, int]]:
        """The kernel's traffic counters (`traffic`), as exported: counting on from where they
        were when a rebuilt table restarted them at 0. Every read passes here (scrapes and the
        daemon's checks), so each series' offset knows its last kernel value."""
        out = []
        with self.lock:
            for labels, connections, size in rows:
                key = (labels["protocol"], labels["port"], labels["destination"])
                out.append((labels, self._on(("connections", *key), connections), self._on(("bytes", *key), size)))
        return out

    def _on(self, key: tuple[str, ...], raw: int) -> int:
        seen = self.traffic_seen.get(key, 0)
        if raw < seen:  # restarted without `rebase` being told (a repair the read came after)
            self.traffic_offset[key] = self.traffic_offset.get(key, 0) + seen
        self.traffic_seen[key] = raw
        return self.traffic_offset.get(key, 0) + raw

    def rebase(self) -> None:
        """The table was written whole: the kernel's counters start again from 0, and the
        exported ones go on from the last values read."""
        with self.lock:
            for key, seen in self.traffic_seen.items():
                self.traffic_offset[key] = self.traffic_offset.get(key, 0) + seen
            self.traffic_seen.clear()

    def alive(self, within: float) -> bool:
        return time.monotonic() - self.last_tick < within


def destination(address: str, port: str) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def traffic(state: TableState) -> Iterator[tuple[dict[str, str], int, int]]:
    """(labels, connections, bytes) for every mapping, then every fallback, in the kernel.
    Bytes are counted per local port; a port no mapping names went to the fallback."""
    unmapped = {family: 0 for family in FAMILIES}
    by_name: dict[tuple[str, str, str], tuple[int, int]] = {}
    for family in FAMILIES:
        for protocol in PROTOCOLS:
            nat = state.maps.get(map_name(protocol, family), {})
            counted = state.maps.get(bytes_set_name(protocol, family), {})
            made = state.maps.get(connections_set_name(protocol, family), {})
            for port, element in nat.items():
                address, _, remote = element.value.partition(" . ")
                labels = {"protocol": protocol, "port": port, "destination": destination(address, remote)}
                seen, new = counted.get(port), made.get(port)
                yield labels, new.packets if new else 0, seen.bytes if seen else 0
            named = state.named_ports.get((protocol, family), {})
            for port, chain in named.items():
                target = state.names.get(chain)
                if target is None:
                    continue
                # A name's rule is in each family of the source: one series for both.
                key = (protocol, port, destination(target.name, str(target.remote_port)))
                seen, new = counted.get(port), made.get(port)
                was = by_name.get(key, (0, 0))
                by_name[key] = (was[0] + (new.packets if new else 0), was[1] + (seen.bytes if seen else 0))
            unmapped[family] += sum(e.bytes for port, e in counted.items() if port not in nat and port not in named)
    for (protocol, port, where), (connections, size) in by_name.items():
        yield {"protocol": protocol, "port": port, "destination": where}, connections, size
    fallbacks: dict[str, tuple[int, int]] = {}  # a named fallback is both families'
    for family, address in sorted(state.fallbacks.items()):
        connections = state.counters.get(fallback_counter_name(family), (0, 0))[0]
        was = fallbacks.get(address, (0, 0))
        fallbacks[address] = (was[0] + connections, was[1] + unmapped[family])
    for address, (connections, size) in fallbacks.items():
        yield {"protocol": "any", "port": "*", "destination": address}, connections, size


def _read_int(path: str) -> int | None:
    try:
        with open(path) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


class Collector:
    """A prometheus_client custom collector: daemon state plus kernel counters per scrape."""

    def __init__(self, stats: Stats, reader: TableReader) -> None:
        self.stats, self.reader = stats, reader

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        yield from self._traffic(CounterMetricFamily)
        s = self.stats
        with s.lock:
            reloads = CounterMetricFamily(
                PREFIX + "reloads", "Configuration reloads by result.", labels=["result"]
            )
            for result, count in s.reloads.items():
                reloads.add_metric([result], count)
            yield reloads
            yield GaugeMetricFamily(
                PREFIX + "last_reload_success_timestamp_seconds",
                "When a configuration was last applied successfully (Unix time).",
                value=s.last_reload_success,
            )
            yield CounterMetricFamily(
                PREFIX + "drift_repairs",
                "Times the table or network setup was found altered and restored.",
                value=s.drift_repairs,
            )
            yield CounterMetricFamily(
                PREFIX + "address_conflicts",
                "Times another host on the LAN answered an ARP probe for the source address.",
                value=s.address_conflicts,
            )
            cumulative = [(str(b), c) for b, c in zip(APPLY_BUCKETS, s.apply_buckets, strict=True)]
            yield HistogramMetricFamily(
                PREFIX + "apply_duration_seconds",
                "Time to apply a configuration to the kernel.",
                buckets=[*cumulative, ("+Inf", s.apply_count)],
                sum_value=s.apply_sum,
            )
            yield GaugeMetricFamily(
                PREFIX + "ready", "1 when the kernel holds the current configuration.", value=int(s.serving)
            )
        if s.names is not None:
            from .dns.metrics import collect as names

            yield from names(s.names)
        if s.ha is not None:
            yield from s.ha.metrics()
        for name, what in (("count", "in use"), ("max", "allowed")):
            value = _read_int(CONNTRACK + name)
            if value is not None:
                metric = "conntrack_entries" + ("_limit" if name == "max" else "")
                yield GaugeMetricFamily(PREFIX + metric, f"Conntrack entries {what}.", value=value)

    def _traffic(self, counter: Any) -> Iterator[Any]:
        labels = ["protocol", "port", "destination"]
        connections = counter(
            PREFIX + "connections", "New connections redirected, by mapping.", labels=labels
        )
        moved = counter(
            PREFIX + "bytes", "Bytes of redirected connections, both directions, by mapping.",
            labels=labels,
        )
        try:
            state = self.reader.read_table(TABLE_FAMILY, TABLE_NAME)
        except EgressRouterError:  # a scrape must answer even when nft cannot: the daemon logs it
            state = None
        if state is not None:
            for values, count, size in self.stats.counted(traffic(state)):
                key = [values[k] for k in labels]
                connections.add_metric(key, count)
                moved.add_metric(key, size)
        yield connections
        yield moved
