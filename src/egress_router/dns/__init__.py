"""Destinations by DNS name.

- `chains`: pure; the per-name chains of the table (their names and their one rule);
- `resolve`: one lookup of a name through the pod's resolver (dnspython, imported only here,
  so that a configuration without names never loads it);
- `follow`: `legacy` mode's resolver thread, which re-resolves each name at its TTL.

A named rule is an element of a verdict map, keyed by local port, that jumps to the name's
chain; that chain's one rule picks one of the name's addresses per new connection (`numgen`).
A new answer rewrites that chain alone, in one transaction: the table's structure, its maps
and every other rule stay as they are, and connections already made keep their NAT.
"""

from __future__ import annotations

from typing import NamedTuple

from ..model import IPAddress, Name


class Answer(NamedTuple):
    """A name's addresses in use (sorted, both families) and when they became current (Unix
    time; 0: never resolved). `families`: when each family's own addresses became current,
    where it differs from `since` (a new AAAA answer leaves the A side's age, and its chain,
    as they were)."""

    addresses: tuple[IPAddress, ...] = ()
    since: float = 0.0
    families: tuple[tuple[int, float], ...] = ()

    def of_family(self, family: int) -> tuple[IPAddress, ...]:
        return tuple(a for a in self.addresses if a.version == family)

    def since_of(self, family: int) -> float:
        """When this family's addresses became current."""
        return dict(self.families).get(family, self.since)

    def replaced(self, addresses: tuple[IPAddress, ...], now: float) -> Answer:
        """The answer after a lookup found `addresses` at `now`: a family whose addresses did
        not change keeps its age, so that its chain is not rewritten."""
        new = Answer(addresses, now)
        kept = tuple(
            (family, self.since_of(family))
            for family in (4, 6)
            if self.of_family(family) and self.of_family(family) == new.of_family(family)
        )
        return new._replace(families=kept)


Answers = tuple[tuple[Name, Answer], ...]  # sorted by name: comparable and hashable
