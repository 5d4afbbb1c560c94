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
    time; 0: never resolved)."""

    addresses: tuple[IPAddress, ...] = ()
    since: float = 0.0

    def of_family(self, family: int) -> tuple[IPAddress, ...]:
        return tuple(a for a in self.addresses if a.version == family)


Answers = tuple[tuple[Name, Answer], ...]  # sorted by name: comparable and hashable
