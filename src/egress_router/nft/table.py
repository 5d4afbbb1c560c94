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
    size: int = 0  # the most elements the map may hold; 0: no limit

    def declaration(self) -> str:
        """The map without its elements."""
        counter = "\t\tcounter\n" if self.counter else ""
        size = f"\t\tsize {self.size}\n" if self.size else ""
        return f"\tmap {self.name} {{\n\t\ttype {self.key_type} : {self.value_type}\n{size}{counter}\t}}"


class TableSpec(NamedTuple):
    family: str
    name: str
    maps: tuple[MapSpec, ...]
    body: str  # counters, sets and chains: everything but the maps and the comment
    comment: str = ""

    @property
    def ref(self) -> str:
        return f"{self.family} {self.name}"

    def skeleton(self, dormant: bool = False) -> str:
        """The table without any map element: when two tables have the same skeleton, one is
        turned into the other by element changes alone. A dormant table is in the kernel but
        no packet meets it: its chains are not hooked."""
        decls = "\n".join(m.declaration() for m in self.maps)
        body = "\n".join(f"\t{line}" for line in self.body.splitlines())
        return f"table {self.ref} {{\n{self._comment()}{_flags(dormant)}{decls}\n{body}\n}}"

    def _comment(self) -> str:
        return f'\tcomment "{self.comment}"\n' if self.comment else ""

    def create_line(self, dormant: bool = False) -> str:
        """`create table`, which fails if the table exists; the comment must come with it."""
        return f"create table {self.ref} {{\n{self._comment()}{_flags(dormant)}}}\n"

    def map(self, name: str) -> MapSpec:
        for m in self.maps:
            if m.name == name:
                return m
        raise KeyError(name)


def _flags(dormant: bool) -> str:
    # Every `table` block states the flags: one without them wakes a dormant table.
    return "\tflags dormant\n" if dormant else ""


class WriteTable(NamedTuple):
    """The whole table: created (`replace` False: it must be absent) or replaced."""

    table: TableSpec
    replace: bool


class DeleteTable(NamedTuple):
    family: str
    name: str


class RestoreTable(NamedTuple):
    """A table put back exactly as `NftBackend.list_table` showed it."""

    family: str
    name: str
    listing: str


class AddElements(NamedTuple):
    ref: str
    map_name: str
    elements: dict[str, str]
    key_type: str  # the map's types, for a writer that encodes elements itself
    value_type: str


class DeleteElements(NamedTuple):
    ref: str
    map_name: str
    keys: list[str]
    key_type: str
    value_type: str


Operation = WriteTable | DeleteTable | RestoreTable | AddElements | DeleteElements


class Transaction:
    """Operations queued for one `nft -f`; render with `str()`."""

    def __init__(self) -> None:
        self.ops: list[Operation] = []

    def replace_table(self, table: TableSpec) -> None:
        self.ops.append(WriteTable(table, replace=True))

    def create_table(self, table: TableSpec) -> None:
        """Like `replace_table` where the table should be absent, as in a new pod: the whole
        transaction fails ("File exists") if it is there. Deleting a table makes the kernel
        wait for readers to finish (about 14 ms here), which a pod start need not pay."""
        self.ops.append(WriteTable(table, replace=False))

    def delete_table(self, family: str, name: str) -> None:
        self.ops.append(DeleteTable(family, name))

    def restore_listing(self, family: str, name: str, listing: str) -> None:
        self.ops.append(RestoreTable(family, name, listing))

    def add_elements(self, table: TableSpec, map_name: str, elements: Mapping[str, str]) -> None:
        if elements:
            types = table.map(map_name)
            self.ops.append(AddElements(table.ref, map_name, dict(elements), types.key_type, types.value_type))

    def delete_elements(self, table: TableSpec, map_name: str, keys: list[str]) -> None:
        if keys:
            types = table.map(map_name)
            self.ops.append(DeleteElements(table.ref, map_name, list(keys), types.key_type, types.value_type))

    @property
    def creates_table(self) -> TableSpec | None:
        """The table, when the transaction is the creation of one and nothing else."""
        if len(self.ops) == 1:
            op = self.ops[0]
            if isinstance(op, WriteTable) and not op.replace:
                return op.table
        return None

    @property
    def writes_table(self) -> bool:
        """Whether the whole table is written, rather than map elements changed."""
        return any(isinstance(op, WriteTable) for op in self.ops)

    def __bool__(self) -> bool:
        return bool(self.ops)

    def __str__(self) -> str:
        return "".join(_script(op) for op in self.ops)


def _script(op: Operation) -> str:
    if isinstance(op, WriteTable):
        return _write_script(op.table, op.replace)
    if isinstance(op, DeleteTable):
        # "add" first so that deleting a table that is not there is not an error.
        return f"add table {op.family} {op.name}\ndelete table {op.family} {op.name}\n"
    if isinstance(op, RestoreTable):
        # nft prints a table in the syntax it reads, counters included.
        return f"add table {op.family} {op.name}\ndelete table {op.family} {op.name}\n{op.listing}\n"
    if isinstance(op, AddElements):
        items = [f"{k} : {v}" for k, v in op.elements.items()]
        return "".join(f"add element {op.ref} {op.map_name} {{ {c} }}\n" for c in _chunks(items))
    return "".join(f"delete element {op.ref} {op.map_name} {{ {c} }}\n" for c in _chunks(op.keys))


def _chunks(items: list[str]) -> list[str]:
    return [", ".join(items[i : i + _CHUNK]) for i in range(0, len(items), _CHUNK)]


def creation_script(table: TableSpec) -> str:
    """`create table` and everything of it but the map elements, dormant: no packet meets it
    until the transaction that fills its maps also wakes it (`wake_script`, `Batch.wake`)."""
    return f"{table.create_line(dormant=True)}{table.skeleton(dormant=True)}\n"


def wake_script(table: TableSpec) -> str:
    """The line that wakes a dormant table: `add table` without flags clears them."""
    return f"add table {table.ref}\n"


def _write_script(table: TableSpec, replace: bool) -> str:
    # "add" makes "delete" safe on a fresh kernel; the whole script is one transaction, so no
    # packet ever sees the table missing or half-built.
    out = [f"add table {table.ref}\ndelete table {table.ref}\n" if replace else table.create_line()]
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
