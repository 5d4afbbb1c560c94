"""`NftBackend` in memory, all-or-nothing like the kernel: for tests without root."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from ..errors import ApplyError
from .table import TableSpec, Transaction


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
        for kind, arg in tx.ops:
            if kind == "create" and isinstance(arg, TableSpec) and arg.ref in tables:
                raise ApplyError("apply the nftables transaction", f"File exists: table {arg.ref}")
            if kind in ("replace", "create"):
                assert isinstance(arg, TableSpec)
                tables[arg.ref] = _Table(
                    arg.skeleton(), {m.name: dict(m.elements) for m in arg.maps}
                )
            elif kind == "restore":
                family, name, listing = arg  # type: ignore[misc]
                tables[f"{family} {name}"] = copy.deepcopy(self.listings[listing])
            elif kind == "delete":
                family, name = arg  # type: ignore[misc]
                tables.pop(f"{family} {name}", None)
            else:
                ref, map_name, items = arg  # type: ignore[misc]
                elements = self._map(tables, ref, map_name)
                if kind == "add":
                    for key, value in items.items():
                        if elements.get(key, value) != value:
                            raise ApplyError("apply the nftables transaction", f"File exists: {key}")
                        elements[key] = value
                else:
                    for key in items:
                        if key not in elements:
                            raise ApplyError(
                                "apply the nftables transaction", f"No such file or directory: {key}"
                            )
                        del elements[key]
        self.tables = tables
        self.scripts.append(str(tx))

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
