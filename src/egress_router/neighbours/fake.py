"""`Announcer` in memory, for tests without root."""

from __future__ import annotations

from collections.abc import Iterable

from ..model import IPAddress
from . import NeighbourReport, Probe


class RecordingAnnouncer:
    """In-memory announcer for tests: remembers what it was asked, answers probes with
    `report` (by default, every gateway answers and nobody else claims a source)."""

    def __init__(self, report: NeighbourReport | None = None) -> None:
        self.sent: list[tuple[str, str, tuple[IPAddress, ...]]] = []
        self.report = report
        self.probes: list[tuple[str, Probe]] = []

    def exchange(
        self,
        interface: str,
        mac: str,
        addresses: Iterable[IPAddress],
        probes: Iterable[Probe] = (),
        timeout: float = 0.5,
    ) -> NeighbourReport:
        self.sent.append((interface, mac, tuple(addresses)))
        asked = list(probes)
        self.probes += [(interface, p) for p in asked]
        if self.report is not None:
            return self.report
        return NeighbourReport(tuple(str(gateway) for _, gateway in asked))
