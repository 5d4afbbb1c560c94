"""The destination names' metrics, at scrape time, from the follower's state."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .follow import Follower

PREFIX = "egress_router_dns_"


def collect(follower: Follower) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    count = GaugeMetricFamily(PREFIX + "addresses", "Addresses in use for a destination name.", labels=["name"])
    success = GaugeMetricFamily(
        PREFIX + "last_success_timestamp_seconds",
        "When a destination name last resolved to usable addresses (Unix time; 0: never).",
        labels=["name"],
    )
    failures = CounterMetricFamily(PREFIX + "failures", "Lookups of a destination name that failed.", labels=["name"])
    for name, state in follower.snapshot():
        count.add_metric([str(name)], len(state.answer.addresses))
        success.add_metric([str(name)], state.last_success)
        failures.add_metric([str(name)], state.failures)
    yield count
    yield success
    yield failures
