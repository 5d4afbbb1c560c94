"""`NftBackend` in memory, all-or-nothing like the kernel: for tests without root."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from ..errors import ApplyError
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
                raise ApplyError("apply the nftables transaction", f"File exists: table {op.table.ref}")
            tables[op.table.ref] = _Table(op.table.skeleton(), {m.name: dict(m.elements) for m in op.table.maps})
        elif isinstance(op, RestoreTable):
            tables[f"{op.family} {op.name}"] = copy.deepcopy(self.listings[op.listing])
        elif isinstance(op, DeleteTable):
            tables.pop(f"{op.family} {op.name}", None)
        elif isinstance(op, AddElements):
            elements = self._map(tables, op.ref, op.map_name)
            for key, value in op.elements.items():
                if elements.get(key, value) != value:  # nft: "add" of a key with another value
                    raise ApplyError("apply the nftables transaction", f"File exists: {key}")
                elements[key] = value
        else:
            elements = self._map(tables, op.ref, op.map_name)
            for key in op.keys:
                if key not in elements:
                    raise ApplyError("apply the nftables transaction", f"No such file or directory: {key}")
                del elements[key]

    @staticmethod
    def _map(tables: dict[str, _Table], ref: str, name: str) -> dict[str, str]:
        if ref not in tables or name not in tables[ref].maps:
            raise ApplyError("apply the nftables transaction", f"No such file or directory: {ref} {name}")
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
