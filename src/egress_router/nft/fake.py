"""`NftBackend` in memory, all-or-nothing like the kernel: for tests without root."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import ApplyError, Kind
from ..schema import TABLE_REF
from .listing import Entry, TableState
from .table import (
    AddElements,
    CreateTable,
    DeleteTable,
    Element,
    Held,
    Operation,
    ReplaceTable,
    RestoreTable,
    SetChain,
    TableSpec,
    Transaction,
)


@dataclass
class _Table:
    skeleton: str
    comment: str  # with the structure's tag, as the kernel holds it
    maps: dict[str, dict[int, Element]]
    generation: int = 0  # which whole write made it: one that writes it anew restarts its counters
    chains: dict[str, str] = field(default_factory=dict)  # the per-name chains' rules


STEP = "apply the nftables transaction"


@dataclass
class FakeNft:
    tables: dict[str, _Table] = field(default_factory=dict)
    scripts: list[str] = field(default_factory=list)  # every transaction applied, as text
    routes: list[str] = field(default_factory=list)  # and the way each one went
    fail_with: str | None = None  # the next apply is refused with this message
    fail_kind: Kind = Kind.OTHER  # and this kind
    listings: dict[str, _Table] = field(default_factory=dict)
    writes: int = 0  # whole tables written

    def apply(self, tx: Transaction) -> None:
        if not tx:
            return
        if self.fail_with is not None:
            message, self.fail_with = self.fail_with, None
            raise ApplyError(STEP, message, self.fail_kind)
        tables = copy.deepcopy(self.tables)
        for op in tx.ops:
            self._apply_one(tables, op)
        self.tables = tables
        self.scripts.append(str(tx))
        self.routes.append(tx.route)

    def _apply_one(self, tables: dict[str, _Table], op: Operation) -> None:
        if isinstance(op, (CreateTable, ReplaceTable)):
            if isinstance(op, CreateTable) and op.table.ref in tables:
                raise ApplyError(STEP, f"File exists: table {op.table.ref}", Kind.EXISTS)
            t = op.table
            self.writes += 1
            maps = {m.name: dict(m.elements) for m in t.maps}
            tables[t.ref] = _Table(t.skeleton(), t.full_comment, maps, self.writes, dict(t.dynamic))
        elif isinstance(op, RestoreTable):
            self.writes += 1
            tables[f"{op.family} {op.name}"] = replace(copy.deepcopy(self.listings[op.listing]), generation=self.writes)
        elif isinstance(op, DeleteTable):
            tables.pop(f"{op.family} {op.name}", None)
        elif isinstance(op, SetChain):
            if op.ref not in tables or op.chain not in tables[op.ref].chains:
                raise ApplyError(STEP, f"No such file or directory: chain {op.chain}", Kind.NOT_FOUND)
            tables[op.ref].chains[op.chain] = op.rule
        elif isinstance(op, AddElements):
            elements = self._map(tables, op.ref, op.map_name)
            for e in op.elements:
                if elements.get(e.port, e) != e:  # the kernel: "add" of a key with another value
                    raise ApplyError(STEP, f"File exists: {e.port}", Kind.EXISTS)
                elements[e.port] = e
        else:
            elements = self._map(tables, op.ref, op.map_name)
            for port in op.ports:
                if port not in elements:
                    raise ApplyError(STEP, f"No such file or directory: {port}", Kind.NOT_FOUND)
                del elements[port]

    @staticmethod
    def _map(tables: dict[str, _Table], ref: str, name: str) -> dict[int, Element]:
        if ref not in tables or name not in tables[ref].maps:
            raise ApplyError(STEP, f"No such file or directory: {ref} {name}", Kind.NOT_FOUND)
        return tables[ref].maps[name]

    def read(self, table: TableSpec) -> Held:
        held = self.tables.get(table.ref)
        if held is None:
            return Held(False, None)
        # The kernel adapter compares the tag and counts each chain's rules; here the skeleton
        # stands for both (a test that alters a table alters its skeleton).
        if held.comment != table.full_comment or held.skeleton != table.skeleton():
            return Held(True, None)
        # Like the kernel adapter, the per-name chains' rules are not read back.
        return Held(True, table.with_elements({m: dict(e) for m, e in held.maps.items()})._replace(dynamic=()))

    def list_table(self, family: str, name: str) -> str | None:
        table = self.tables.get(f"{family} {name}")
        if table is None:
            return None
        listing = table.skeleton + "".join(
            f"\n{m}: {sorted(e.values())}" for m, e in sorted(table.maps.items())
        ) + "".join(f"\nchain {c}: {r}" for c, r in sorted(table.chains.items()))
        self.listings[listing] = copy.deepcopy(table)  # what a "restore" of this text puts back
        return listing

    def elements(self, family: str, name: str, map_name: str) -> dict[str, str]:
        """A map's elements as nft writes them: {"80": "203.0.113.25 . 80"}."""
        held = self.tables[f"{family} {name}"].maps[map_name]
        return {str(p): f"{e.address} . {e.remote_port}" for p, e in held.items()}


class FakeTableReader:
    """`TableReader` over `FakeNft` and `FakeNet`, for tests; `counts` sets element counters
    as {map: {key: (packets, bytes)}} and `named` the named counters, of the table as it is
    when they are set: like the kernel's, they start from 0 again once the table is written
    whole."""

    def __init__(self, nft: Any, net: Any) -> None:
        self.nft, self.net = nft, net
        self._counts: dict[str, dict[str, tuple[int, int]]] = {}
        self._named: dict[str, tuple[int, int]] = {}
        self._generation = self._current()

    def _current(self) -> int | None:
        table = self.nft.tables.get(TABLE_REF)
        return None if table is None else int(table.generation)

    @property
    def counts(self) -> dict[str, dict[str, tuple[int, int]]]:
        return self._counts

    @counts.setter
    def counts(self, value: dict[str, dict[str, tuple[int, int]]]) -> None:
        self._counts, self._generation = value, self._current()

    @property
    def named(self) -> dict[str, tuple[int, int]]:
        return self._named

    @named.setter
    def named(self, value: dict[str, tuple[int, int]]) -> None:
        self._named, self._generation = value, self._current()

    def read_table(self, family: str, name: str) -> TableState | None:
        table = self.nft.tables.get(f"{family} {name}")
        if table is None:
            return None
        if table.generation != self._generation:  # written anew: its counters start again
            self._counts, self._named, self._generation = {}, {}, table.generation
        maps = {
            m: {
                str(p): Entry(str(p), f"{e.address} . {e.remote_port}", *self.counts.get(m, {}).get(str(p), (0, 0)))
                for p, e in elements.items()
            }
            for m, elements in table.maps.items()
        }
        for name_, counted in self.counts.items():  # the traffic-filled byte sets
            if name_ not in maps:
                maps[name_] = {k: Entry(k, "", *c) for k, c in counted.items()}
        listing = self.nft.list_table(family, name)
        fallbacks = {
            int(f): address
            for f, address in re.findall(r"counter name fallback(\d) dnat ip6? to (\S+)", listing)
        }
        return TableState(listing, maps, dict(self.named), fallbacks)
