"""`NftBackend` on the real kernel: `nft -f -` for tables, chains and rules, and map elements
written over netlink by `nft.elements` (which does in ~6 ms what costs nft ~45 ms at 10,000
elements).

Each `apply` stays all-or-nothing:
- a transaction that only changes elements is one netlink batch, itself one transaction;
- the creation of a table (a new pod) is the table without elements through nft, dormant (no
  hook sees it), then one batch that fills its maps and wakes it: packets meet all of it at
  once, never a table with empty maps (whose fallback rule would catch every mapped port). If
  the batch is refused, the dormant table is deleted again;
- anything else (replacing or restoring a table) is one `nft -f` script, elements included, so
  that a live router never runs without its rules.
"""

from __future__ import annotations

from ..errors import ApplyError, Kind, SetupError
from ..process import Completed, Spawned
from .elements import FAMILIES, Batch, BatchTooLarge, ElementWriter, MapCodec
from .table import AddElements, DeleteElements, TableSpec, Transaction, creation_script, wake_script

NFT_HINT = "install the nftables package in the image (apt-get install nftables)"
STEP = "apply the nftables transaction"


class NftCli:
    def __init__(self, binary: str = "nft", netlink: bool = True) -> None:
        self.binary = binary
        self.elements = ElementWriter() if netlink else None  # None: nft writes everything

    def _start(self, args: list[str], script: str | None, step: str) -> Spawned:
        """nft running with `script` as its input."""
        try:
            return Spawned([self.binary, *args], script)
        except FileNotFoundError:
            raise SetupError(f"the nft command was not found ({self.binary})", NFT_HINT) from None
        except PermissionError as error:
            raise ApplyError(step, str(error)) from None

    def _run(self, args: list[str], script: str | None, step: str) -> Completed:
        return self._start(args, script, step).wait()

    def apply(self, tx: Transaction) -> None:
        if not tx:
            return
        writer = self.elements
        if writer is not None:
            try:
                table = tx.creates_table
                if table is not None:
                    if self._create(writer, table):
                        return
                else:
                    batch = element_batch(tx)
                    if batch is not None:
                        writer.write(batch)
                        return
            except BatchTooLarge:
                pass  # the socket's buffer could not grow that much: nft takes any size
        self._script(str(tx))

    def _create(self, writer: ElementWriter, table: TableSpec) -> bool:
        """Create the table through nft, dormant, then fill its maps and wake it in one netlink
        batch: packets meet the whole table or none of it. False (and nothing done) if a map
        has types that `nft.elements` does not encode."""
        if not all(MapCodec(m.key_type, m.value_type).usable for m in table.maps):
            return False
        # nft builds the table while this process encodes the elements: each takes a few ms.
        process = self._start(["-f", "-"], creation_script(table), STEP)
        filled = Transaction()
        for m in table.maps:
            filled.add_elements(table, m.name, m.elements)
        try:
            batch = element_batch(filled)
        finally:
            done = process.wait()
        if done.returncode != 0:
            raise ApplyError(STEP, explain_nft_error(done.stderr), nft_error_kind(done.stderr))
        family, _, name = table.ref.partition(" ")
        try:
            if batch is None:  # an element netlink.py cannot encode: nft says what is wrong
                self._script(str(filled) + wake_script(table))
            else:
                batch.wake(family, name)
                writer.write(batch)
        except (ApplyError, BatchTooLarge) as error:
            self._remove_dormant(table, error)
            raise
        return True

    def _remove_dormant(self, table: TableSpec, error: Exception) -> None:
        """Delete the table a refused fill left dormant. If that fails too, the caller hears
        both: the refusal, and what is left in the kernel."""
        try:
            self._script(f"delete table {table.ref}\n")
        except ApplyError as cleanup:
            detail = error.detail if isinstance(error, ApplyError) else "the batch was too large"
            raise ApplyError(
                STEP, f"{detail}; the dormant table {table.ref} could not be removed: {cleanup.detail}"
            ) from None

    def _script(self, script: str) -> None:
        done = self._run(["-f", "-"], script, STEP)
        if done.returncode != 0:
            raise ApplyError(STEP, explain_nft_error(done.stderr), nft_error_kind(done.stderr))

    def list_table(self, family: str, name: str, as_json: bool = False) -> str | None:
        """nft's listing of the table (its JSON form with `as_json`), or None if absent."""
        args = ["-j"] * as_json + ["list", "table", family, name]
        done = self._run(args, None, f"list table {family} {name}")
        if done.returncode == 0:
            return done.stdout
        kind = nft_error_kind(done.stderr)
        if kind is Kind.NOT_FOUND:
            return None
        raise ApplyError(f"list table {family} {name}", explain_nft_error(done.stderr), kind)


def nft_error_kind(stderr: str) -> Kind:
    """nft reports the kernel's refusal as strerror's words: the one place they are read."""
    if "File exists" in stderr:
        return Kind.EXISTS
    if "No such file or directory" in stderr:
        return Kind.NOT_FOUND
    if "Operation not permitted" in stderr:
        return Kind.NOT_PERMITTED
    return Kind.OTHER


def explain_nft_error(stderr: str) -> str:
    """nft's first error line, with the kernel-level causes a user can act on spelled out."""
    lines = [line for line in stderr.splitlines() if "Error:" in line] or stderr.splitlines()
    first = lines[0].split("Error:", 1)[-1].strip() if lines else "nft failed without a message"
    if "Operation not permitted" in stderr:
        first += " (the router needs the NET_ADMIN capability)"
    elif "Protocol not supported" in stderr or "Could not process rule: Not supported" in stderr:
        first += " (this kernel lacks nf_tables or one of its modules: nft_nat, nft_fib, nft_reject)"
    return first


def element_batch(tx: Transaction) -> Batch | None:
    """The transaction as one netlink batch, or None when it does more than change elements,
    or changes a map whose types `nft.elements` does not encode."""
    batch = Batch()
    codecs: dict[tuple[str, str], MapCodec] = {}
    for op in tx.ops:
        if not isinstance(op, (AddElements, DeleteElements)):
            return None
        codec = codecs.get((op.key_type, op.value_type))
        if codec is None:
            codec = codecs[op.key_type, op.value_type] = MapCodec(op.key_type, op.value_type)
        family, _, table = op.ref.partition(" ")
        if not codec.usable or family not in FAMILIES:
            return None
        try:
            if isinstance(op, AddElements):
                batch.add(family, table, op.map_name, codec, op.elements)
            else:
                batch.delete(family, table, op.map_name, codec, op.keys)
        except ValueError:
            return None  # nft says what is wrong with the element better
    return batch
