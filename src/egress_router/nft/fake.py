"""`NftBackend` in memory, all-or-nothing like the kernel: for tests without root."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import ApplyError, Kind
from .listing import Element, TableState
from .table import (
    AddElements,
    DeleteTable,
    Operation,
    RestoreTable,
    Transaction,
    WriteTable,
)


@dataclass
class _Table:
    skeleton: str
    maps: dict[str, dict[str, str]]


@dataclass
class FakeNft:
    tables: dict[str, _Table] = field(default_factory=dict)
    scripts: list[str] = field(default_factory=list)  # every transaction applied, as text
    fail_with: str | None = None  # the next apply is refused with this message
    listings: dict[str, _Table] = field(default_factory=dict)

    def apply(self, tx: Transaction) -> None:
        if not tx:
            return
        if self.fail_with is not None:
            message, self.fail_with = self.fail_with, None
            raise ApplyError("apply the nftables transaction", message)
        tables = copy.deepcopy(self.tables)
        for op in tx.ops:
            self._apply_one(tables, op)
        self.tables = tables
        self.scripts.append(str(tx))

    def _apply_one(self, tables: dict[str, _Table], op: Operation) -> None:
        if isinstance(op, WriteTable):
            if not op.replace and op.table.ref in tables:
                raise ApplyError("apply the nftables transaction", f"File exists: table {op.table.ref}", Kind.EXISTS)
            tables[op.table.ref] = _Table(op.table.skeleton(), {m.name: dict(m.elements) for m in op.table.maps})
        elif isinstance(op, RestoreTable):
            tables[f"{op.family} {op.name}"] = copy.deepcopy(self.listings[op.listing])
        elif isinstance(op, DeleteTable):
            tables.pop(f"{op.family} {op.name}", None)
        elif isinstance(op, AddElements):
            elements = self._map(tables, op.ref, op.map_name)
            for key, value in op.elements.items():
                if elements.get(key, value) != value:  # nft: "add" of a key with another value
                    raise ApplyError("apply the nftables transaction", f"File exists: {key}", Kind.EXISTS)
                elements[key] = value
        else:
            elements = self._map(tables, op.ref, op.map_name)
            for key in op.keys:
                if key not in elements:
                    raise ApplyError("apply the nftables transaction", f"No such file or directory: {key}", Kind.NOT_FOUND)
                del elements[key]

    @staticmethod
    def _map(tables: dict[str, _Table], ref: str, name: str) -> dict[str, str]:
        if ref not in tables or name not in tables[ref].maps:
            raise ApplyError("apply the nftables transaction", f"No such file or directory: {ref} {name}", Kind.NOT_FOUND)
        return tables[ref].maps[name]

    def list_table(self, family: str, name: str) -> str | None:
        table = self.tables.get(f"{family} {name}")
        if table is None:
            return None
        listing = table.skeleton + "".join(
            f"\n{m}: {sorted(e.items())}" for m, e in sorted(table.maps.items())
        )
        self.listings[listing] = copy.deepcopy(table)  # what a "restore" of this text puts back
        return listing

    def elements(self, family: str, name: str, map_name: str) -> dict[str, str]:
        return dict(self.tables[f"{family} {name}"].maps[map_name])


class FakeTableReader:
    """`TableReader` over `FakeNft` and `FakeNet`, for tests; `counts` sets element counters
    as {map: {key: (packets, bytes)}} and `named` the named counters."""

    def __init__(self, nft: Any, net: Any) -> None:
        self.nft, self.net = nft, net
        self.counts: dict[str, dict[str, tuple[int, int]]] = {}
        self.named: dict[str, tuple[int, int]] = {}

    def read_table(self, family: str, name: str) -> TableState | None:
        table = self.nft.tables.get(f"{family} {name}")
        if table is None:
            return None
        maps = {
            m: {
                k: Element(k, v, *self.counts.get(m, {}).get(k, (0, 0)))
                for k, v in elements.items()
            }
            for m, elements in table.maps.items()
        }
        for name_, counted in self.counts.items():  # the traffic-filled byte sets
            if name_ not in maps:
                maps[name_] = {k: Element(k, "", *c) for k, c in counted.items()}
        listing = self.nft.list_table(family, name)
        fallbacks = {
            int(f): address
            for f, address in re.findall(r"counter name fallback(\d) dnat ip6? to (\S+)", listing)
        }
        return TableState(listing, maps, dict(self.named), fallbacks)
