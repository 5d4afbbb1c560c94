"""`NftBackend` on the real kernel: `nft -f -` for tables, chains and rules, and map elements
written over netlink by `nft.netlink` (which does in ~6 ms what costs nft ~45 ms at 10,000
elements).

Each `apply` stays all-or-nothing:
- a transaction that only changes elements is one netlink batch, itself one transaction;
- the creation of a table (a new pod) is the table without elements through nft, then its
  elements in one batch; if the batch is refused, the table is deleted again. Between the two
  the table exists with empty maps, which refuses connections rather than letting them through;
- anything else (replacing or restoring a table) is one `nft -f` script, elements included, so
  that a live router never runs without its rules.
"""

from __future__ import annotations

import subprocess

from ..errors import ApplyError, SetupError
from .netlink import FAMILIES, Batch, BatchTooLarge, ElementWriter, MapCodec
from .table import AddElements, DeleteElements, TableSpec, Transaction, creation_script

NFT_HINT = "install the nftables package in the image (apt-get install nftables)"
STEP = "apply the nftables transaction"


class NftCli:
    def __init__(self, binary: str = "nft", netlink: bool = True) -> None:
        self.binary = binary
        self.elements = ElementWriter() if netlink else None  # None: nft writes everything

    def _run(self, args: list[str], script: str | None, step: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [self.binary, *args],
                input=script,
                capture_output=True,
                text=True,
                check=False,
            )
        except FileNotFoundError:
            raise SetupError(f"the nft command was not found ({self.binary})", NFT_HINT) from None
        except PermissionError as error:
            raise ApplyError(step, str(error)) from None

    def apply(self, tx: Transaction) -> None:
        if not tx:
            return
        writer = self.elements
        if writer is not None:
            try:
                batch = element_batch(tx)
                if batch is not None:
                    writer.write(batch)
                    return
                table = tx.creates_table
                if table is not None:
                    filled = Transaction()
                    for m in table.maps:
                        filled.add_elements(table, m.name, m.elements)
                    batch = element_batch(filled)
                    if batch is not None:
                        self._create(writer, table, batch)
                        return
            except BatchTooLarge:
                pass  # the socket's buffer could not grow that much: nft takes any size
        self._script(str(tx))

    def _create(self, writer: ElementWriter, table: TableSpec, batch: Batch) -> None:
        self._script(creation_script(table))
        try:
            writer.write(batch)
        except (ApplyError, BatchTooLarge):
            self._script(f"delete table {table.ref}\n")
            raise

    def _script(self, script: str) -> None:
        done = self._run(["-f", "-"], script, STEP)
        if done.returncode != 0:
            raise ApplyError(STEP, explain_nft_error(done.stderr))

    def list_table(self, family: str, name: str, as_json: bool = False) -> str | None:
        """nft's listing of the table (its JSON form with `as_json`), or None if absent."""
        args = ["-j"] * as_json + ["list", "table", family, name]
        done = self._run(args, None, f"list table {family} {name}")
        if done.returncode == 0:
            return done.stdout
        if "No such file or directory" in done.stderr:
            return None
        raise ApplyError(f"list table {family} {name}", explain_nft_error(done.stderr))


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
    or changes a map whose types `nft.netlink` does not encode."""
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
