"""An nftables table as data, and transactions on it. Pure.

A `Transaction` queues operations, and what they are decides how it is applied, before anything
runs (`Transaction.route`):
- `BATCH`: map element changes only, one nf_tables netlink batch;
- `CREATE`: a new pod's table: the structure through `nft -f`, dormant, then one batch that
  fills the maps and wakes it;
- `SCRIPT`: anything else (replacing, restoring or deleting a table), one `nft -f` script.
`str(tx)` renders what that route sends, in nft's syntax: the script, and each batch as the
`add element` / `delete element` lines it carries. `diff` turns "what the kernel holds" and
"what it should hold" into the smallest transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

# One `elements = { ... }` line per this many elements keeps scripts readable and nft's error
# positions useful; nft reads any number of lines in one transaction.
_CHUNK = 500
_ADDRESS_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
# The table's comment ends with a tag of its structure: a restart that finds the tag it would
# write knows the chains, rules and declarations without listing them.
TAG_PREFIX = "skeleton "


class Element(NamedTuple):
    """One mapping as a map holds it: local port -> address . remote port."""

    port: int
    address: str
    remote_port: int

    def __str__(self) -> str:
        """The element in nft's syntax: the one place it is written as text."""
        return f"{self.port} : {self.address} . {self.remote_port}"


class MapSpec(NamedTuple):
    """A NAT map: `inet_service : ipvN_addr . inet_service`, the only layout the router uses."""

    name: str
    family: int  # of the addresses: 4 or 6
    elements: Mapping[int, Element]  # by local port
    size: int = 0  # the most elements the map may hold; 0: no limit

    def declaration(self) -> str:
        """The map without its elements."""
        size = f"\t\tsize {self.size}\n" if self.size else ""
        value = f"{_ADDRESS_TYPE[self.family]} . inet_service"
        return f"\tmap {self.name} {{\n\t\ttype inet_service : {value}\n{size}\t}}"


class TableSpec(NamedTuple):
    family: str
    name: str
    maps: tuple[MapSpec, ...]
    body: str  # counters, sets and chains: everything but the maps and the comment
    comment: str = ""
    # The per-name chains' rules, (chain, its one rule), sorted: declared empty in `body`, so
    # that a name's new answer is not another structure (not in the tag, not in the skeleton).
    dynamic: tuple[tuple[str, str], ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.family} {self.name}"

    @property
    def tag(self) -> str:
        """A hash of everything but the map elements: equal tags, equal structures."""
        from _blake2 import blake2b  # hashlib's OpenSSL import costs a pod start 3 ms

        structure = "\n".join([self.ref, self.comment, *(m.declaration() for m in self.maps), self.body])
        return blake2b(structure.encode(), digest_size=8).hexdigest()

    @property
    def full_comment(self) -> str:
        """The comment as the kernel holds it, with the structure's tag."""
        return f"{self.comment}; {TAG_PREFIX}{self.tag}" if self.comment else f"{TAG_PREFIX}{self.tag}"

    def skeleton(self, dormant: bool = False) -> str:
        """The table without any map element: when two tables have the same skeleton, one is
        turned into the other by element changes alone. A dormant table is in the kernel but
        no packet meets it: its chains are not hooked."""
        decls = "\n".join(m.declaration() for m in self.maps)
        body = "\n".join(f"\t{line}" for line in self.body.splitlines())
        return f"table {self.ref} {{\n{self._comment()}{_flags(dormant)}{decls}\n{body}\n}}"

    def _comment(self) -> str:
        return f'\tcomment "{self.full_comment}"\n'

    def create_line(self, dormant: bool = False) -> str:
        """`create table`, which fails if the table exists; the comment must come with it."""
        return f"create table {self.ref} {{\n{self._comment()}{_flags(dormant)}}}\n"

    def rules(self) -> dict[str, int]:
        """How many rules each chain of `body` holds (a line in a chain block is one rule; its
        `type ... hook` line is none)."""
        counts: dict[str, int] = {}
        chain = None
        for line in self.body.splitlines():
            if line.startswith("chain "):
                chain = line.split()[1]
                counts[chain] = 0
            elif line == "}":
                chain = None
            elif chain is not None and not line.startswith("\ttype "):
                counts[chain] += 1
        for chain, _ in self.dynamic:  # one rule each, written after the skeleton
            counts[chain] = counts.get(chain, 0) + 1
        return counts

    def map(self, name: str) -> MapSpec:
        for m in self.maps:
            if m.name == name:
                return m
        raise KeyError(name)

    def with_elements(self, elements: Mapping[str, Mapping[int, Element]]) -> TableSpec:
        """The same structure holding `elements` (by map name; a map not named is empty)."""
        return self._replace(maps=tuple(m._replace(elements=elements.get(m.name, {})) for m in self.maps))


class Held(NamedTuple):
    """The router's table as the kernel holds it: absent (`exists` False), there with another
    structure than the one asked about (`table` None), or there with that structure and the
    elements its maps hold (`table`)."""

    exists: bool
    table: TableSpec | None


def _flags(dormant: bool) -> str:
    # Every `table` block states the flags: one without them wakes a dormant table.
    return "\tflags dormant\n" if dormant else ""


class CreateTable(NamedTuple):
    """A new pod's table: it must be absent (the transaction fails whole if it is there).
    Deleting a table makes the kernel wait for readers to finish (about 14 ms here), which a
    pod start need not pay."""

    table: TableSpec


class ReplaceTable(NamedTuple):
    """The whole table, elements included, in one `nft -f`: a live router never runs without
    its rules."""

    table: TableSpec


class DeleteTable(NamedTuple):
    family: str
    name: str


class RestoreTable(NamedTuple):
    """A table put back exactly as `NftBackend.list_table` showed it."""

    family: str
    name: str
    listing: str


class SetChain(NamedTuple):
    """A per-name chain's one rule replaced: flushed and written again in one transaction."""

    ref: str
    chain: str
    rule: str


class AddElements(NamedTuple):
    ref: str
    map_name: str
    family: int  # of the map's addresses
    elements: tuple[Element, ...]


class DeleteElements(NamedTuple):
    ref: str
    map_name: str
    family: int
    ports: tuple[int, ...]


Operation = CreateTable | ReplaceTable | DeleteTable | RestoreTable | AddElements | DeleteElements | SetChain
ElementOperation = AddElements | DeleteElements

BATCH, CREATE, SCRIPT = "netlink batch", "create, then fill by netlink batch", "nft -f"
# Where a creation's `nft -f` script ends and the batch that fills and wakes the table begins.
BATCH_MARK = "# one netlink batch: fill the maps, wake the table\n"


class Transaction:
    """Operations queued for one all-or-nothing apply; `str()` is what the apply sends."""

    def __init__(self) -> None:
        self.ops: list[Operation] = []

    def replace_table(self, table: TableSpec) -> None:
        self.ops.append(ReplaceTable(table))

    def create_table(self, table: TableSpec) -> None:
        self.ops.append(CreateTable(table))

    def delete_table(self, family: str, name: str) -> None:
        self.ops.append(DeleteTable(family, name))

    def restore_listing(self, family: str, name: str, listing: str) -> None:
        self.ops.append(RestoreTable(family, name, listing))

    def set_chain(self, table: TableSpec, chain: str, rule: str) -> None:
        self.ops.append(SetChain(table.ref, chain, rule))

    def add_elements(self, table: TableSpec, map_name: str, elements: Iterable[Element]) -> None:
        items = tuple(elements)
        if items:
            self.ops.append(AddElements(table.ref, map_name, table.map(map_name).family, items))

    def delete_elements(self, table: TableSpec, map_name: str, ports: Iterable[int]) -> None:
        items = tuple(ports)
        if items:
            self.ops.append(DeleteElements(table.ref, map_name, table.map(map_name).family, items))

    @property
    def route(self) -> str:
        """How this transaction is applied, from what it holds: BATCH, CREATE or SCRIPT."""
        if all(isinstance(op, (AddElements, DeleteElements)) for op in self.ops):
            return BATCH
        if len(self.ops) == 1 and isinstance(self.ops[0], CreateTable):
            return CREATE
        return SCRIPT

    @property
    def created(self) -> TableSpec | None:
        """The table, when the transaction is the creation of one."""
        op = self.ops[0] if len(self.ops) == 1 else None
        return op.table if isinstance(op, CreateTable) else None

    @property
    def writes_table(self) -> bool:
        """Whether the whole table is written, rather than map elements changed."""
        return any(isinstance(op, (CreateTable, ReplaceTable, RestoreTable)) for op in self.ops)

    def __bool__(self) -> bool:
        return bool(self.ops)

    def __str__(self) -> str:
        table = self.created
        if table is not None:
            return creation_script(table) + BATCH_MARK + fill_text(table) + wake_script(table)
        return "".join(_script(op) for op in self.ops)


def fill(table: TableSpec) -> list[AddElements]:
    """The operations that put every element of `table` into its empty maps."""
    return [AddElements(table.ref, m.name, m.family, tuple(m.elements.values())) for m in table.maps if m.elements]


def fill_text(table: TableSpec) -> str:
    return "".join(_script(op) for op in fill(table))


def _script(op: Operation) -> str:
    if isinstance(op, (CreateTable, ReplaceTable)):
        return _write_script(op.table, isinstance(op, ReplaceTable))
    if isinstance(op, DeleteTable):
        # "add" first so that deleting a table that is not there is not an error.
        return f"add table {op.family} {op.name}\ndelete table {op.family} {op.name}\n"
    if isinstance(op, RestoreTable):
        # nft prints a table in the syntax it reads, counters included.
        return f"add table {op.family} {op.name}\ndelete table {op.family} {op.name}\n{op.listing}\n"
    if isinstance(op, SetChain):
        return f"flush chain {op.ref} {op.chain}\nadd rule {op.ref} {op.chain} {op.rule}\n"
    if isinstance(op, AddElements):
        items = [str(e) for e in op.elements]
        return "".join(f"add element {op.ref} {op.map_name} {{ {c} }}\n" for c in _chunks(items))
    return "".join(f"delete element {op.ref} {op.map_name} {{ {c} }}\n" for c in _chunks([str(p) for p in op.ports]))


def _chunks(items: list[str]) -> list[str]:
    return [", ".join(items[i : i + _CHUNK]) for i in range(0, len(items), _CHUNK)]


def creation_script(table: TableSpec) -> str:
    """`create table` and everything of it but the map elements, dormant: no packet meets it
    until the batch that fills its maps also wakes it."""
    return f"{table.create_line(dormant=True)}{table.skeleton(dormant=True)}\n{dynamic_text(table)}"


def dynamic_text(table: TableSpec) -> str:
    """The per-name chains' rules, into the chains the skeleton declares empty."""
    return "".join(f"add rule {table.ref} {chain} {rule}\n" for chain, rule in table.dynamic)


def wake_script(table: TableSpec) -> str:
    """The line that wakes a dormant table: `add table` without flags clears them (the batch
    sends the same as a NEWTABLE message)."""
    return f"add table {table.ref}\n"


def _write_script(table: TableSpec, replace: bool) -> str:
    # "add" makes "delete" safe on a fresh kernel; the whole script is one transaction, so no
    # packet ever sees the table missing or half-built.
    out = [f"add table {table.ref}\ndelete table {table.ref}\n" if replace else table.create_line()]
    out += [table.skeleton(), "\n", dynamic_text(table), fill_text(table)]
    return "".join(out)


def diff(current: TableSpec | None, desired: TableSpec) -> Transaction:
    """The transaction that turns `current` (None: unknown or absent) into `desired`."""
    tx = Transaction()
    if current is None or current.skeleton() != desired.skeleton():
        tx.replace_table(desired)
        return tx
    for new in desired.maps:
        old = current.map(new.name).elements
        if old == new.elements:  # compared in C: a restart that finds its rules pays ~1 ms
            continue
        gone = [p for p in old if p not in new.elements]
        changed: list[int] = []
        added: list[Element] = []
        for port, element in new.elements.items():
            was = old.get(port)
            if was != element:
                added.append(element)
                if was is not None:
                    changed.append(port)
        # A changed element is deleted and added in the same transaction: nf_tables refuses to
        # add a key that is there with another value. Connections already made keep their NAT.
        tx.delete_elements(desired, new.name, gone + changed)
        tx.add_elements(desired, new.name, added)
    held = dict(current.dynamic)
    for chain, rule in desired.dynamic:
        if held.get(chain) != rule:  # a name's new answer: its chain alone
            tx.set_chain(desired, chain, rule)
    return tx
