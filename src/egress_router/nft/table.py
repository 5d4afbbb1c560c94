"""An nftables table as data, and transactions on it as `nft -f` scripts. Pure.

A `Transaction` only queues operations; `str(tx)` is the exact script that `nft -f` runs, and nft
applies a script all-or-nothing. `diff` turns "what the kernel holds" and "what it should hold"
into the smallest transaction: element changes when only map contents differ, an atomic
replacement of the whole table otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

# One `elements = { ... }` line per this many elements keeps scripts readable and nft's error
# positions useful; nft reads any number of lines in one transaction.
_CHUNK = 500


class MapSpec(NamedTuple):
    name: str
    key_type: str
    value_type: str
    elements: Mapping[str, str]
    counter: bool = False

    def declaration(self) -> str:
        """The map without its elements."""
        counter = "\t\tcounter\n" if self.counter else ""
        return f"\tmap {self.name} {{\n\t\ttype {self.key_type} : {self.value_type}\n{counter}\t}}"


class TableSpec(NamedTuple):
    family: str
    name: str
    maps: tuple[MapSpec, ...]
    body: str  # counters, sets and chains: everything but the maps and the comment
    comment: str = ""

    @property
    def ref(self) -> str:
        return f"{self.family} {self.name}"

    def skeleton(self) -> str:
        """The table without any map element: when two tables have the same skeleton, one is
        turned into the other by element changes alone."""
        decls = "\n".join(m.declaration() for m in self.maps)
        body = "\n".join(f"\t{line}" for line in self.body.splitlines())
        return f"table {self.ref} {{\n{self._comment()}{decls}\n{body}\n}}"

    def _comment(self) -> str:
        return f'\tcomment "{self.comment}"\n' if self.comment else ""

    def create_line(self) -> str:
        """`create table`, which fails if the table exists; the comment must come with it."""
        return f"create table {self.ref} {{\n{self._comment()}}}\n"

    def map(self, name: str) -> MapSpec:
        for m in self.maps:
            if m.name == name:
                return m
        raise KeyError(name)


class Transaction:
    """Operations queued for one `nft -f`; render with `str()`."""

    def __init__(self) -> None:
        self.ops: list[tuple[str, object]] = []

    def replace_table(self, table: TableSpec) -> None:
        self.ops.append(("replace", table))

    def create_table(self, table: TableSpec) -> None:
        """Like `replace_table` where the table should be absent, as in a new pod: the whole
        transaction fails ("File exists") if it is there. Deleting a table makes the kernel
        wait for readers to finish (about 14 ms here), which a pod start need not pay."""
        self.ops.append(("create", table))

    def delete_table(self, family: str, name: str) -> None:
        self.ops.append(("delete", (family, name)))

    def restore_listing(self, family: str, name: str, listing: str) -> None:
        """Put back a table exactly as `NftBackend.list_table` showed it."""
        self.ops.append(("restore", (family, name, listing)))

    def add_elements(self, table: TableSpec, map_name: str, elements: Mapping[str, str]) -> None:
        if elements:
            self.ops.append(("add", (table.ref, map_name, dict(elements))))

    def delete_elements(self, table: TableSpec, map_name: str, keys: list[str]) -> None:
        if keys:
            self.ops.append(("remove", (table.ref, map_name, list(keys))))

    def __bool__(self) -> bool:
        return bool(self.ops)

    def __str__(self) -> str:
        out: list[str] = []
        for kind, arg in self.ops:
            if kind in ("replace", "create"):
                assert isinstance(arg, TableSpec)
                out.append(_replace_script(arg, delete_first=kind == "replace"))
            elif kind == "delete":
                family, name = arg  # type: ignore[misc]
                # "add" first so that deleting a table that is not there is not an error.
                out.append(f"add table {family} {name}\ndelete table {family} {name}\n")
            elif kind == "restore":
                family, name, listing = arg  # type: ignore[misc]
                # nft prints a table in the syntax it reads, counters included.
                out.append(f"add table {family} {name}\ndelete table {family} {name}\n{listing}\n")
            elif kind == "add":
                ref, map_name, elements = arg  # type: ignore[misc]
                items = [f"{k} : {v}" for k, v in elements.items()]
                out += [f"add element {ref} {map_name} {{ {c} }}\n" for c in _chunks(items)]
            else:
                ref, map_name, keys = arg  # type: ignore[misc]
                out += [f"delete element {ref} {map_name} {{ {c} }}\n" for c in _chunks(keys)]
        return "".join(out)


def _chunks(items: list[str]) -> list[str]:
    return [", ".join(items[i : i + _CHUNK]) for i in range(0, len(items), _CHUNK)]


def _replace_script(table: TableSpec, delete_first: bool = True) -> str:
    # "add" makes "delete" safe on a fresh kernel; the whole script is one transaction, so no
    # packet ever sees the table missing or half-built.
    out = [f"add table {table.ref}\ndelete table {table.ref}\n" if delete_first else table.create_line()]
    out += [table.skeleton(), "\n"]
    for m in table.maps:
        items = [f"{k} : {v}" for k, v in m.elements.items()]
        out += [f"add element {table.ref} {m.name} {{ {c} }}\n" for c in _chunks(items)]
    return "".join(out)


def diff(current: TableSpec | None, desired: TableSpec) -> Transaction:
    """The transaction that turns `current` (None: unknown or absent) into `desired`."""
    tx = Transaction()
    if current is None or current.skeleton() != desired.skeleton():
        tx.replace_table(desired)
        return tx
    for new in desired.maps:
        old = current.map(new.name).elements
        gone = [k for k in old if k not in new.elements]
        changed = [k for k, v in new.elements.items() if k in old and old[k] != v]
        added = {k: v for k, v in new.elements.items() if old.get(k) != v}
        # A changed element is deleted and added in the same transaction: nft refuses to "add"
        # a key that is there with another value. Connections already made keep their NAT.
        tx.delete_elements(desired, new.name, gone + changed)
        tx.add_elements(desired, new.name, added)
    return tx
