"""`NftBackend` on the real kernel: `nft -f -` for tables, chains and rules, and map elements
written and read over netlink by `nft.elements` (which does in ~6 ms what costs nft ~45 ms at
10,000 elements).

Each transaction says how it is applied (`Transaction.route`), and `apply` takes that one way:
- `BATCH`: element changes, one netlink batch, itself one transaction;
- `CREATE`: a new pod's table without elements through nft, dormant (no hook sees it), then one
  batch that fills its maps and wakes it: packets meet all of it at once, never a table with
  empty maps (whose fallback rule would catch every mapped port). If the batch is refused, the
  dormant table is deleted again;
- `SCRIPT`: anything else (replacing or restoring a table), one `nft -f` script, elements
  included, so that a live router never runs without its rules.
Nothing falls back to another way at run time: what `str(tx)` shows is what was sent.
"""

from __future__ import annotations

from ..errors import ApplyError, Kind, SetupError
from ..process import Completed, Spawned
from . import readback
from .elements import Batch, ElementWriter
from .table import BATCH, CREATE, AddElements, DeleteElements, Held, TableSpec, Transaction, creation_script, fill

NFT_HINT = "install the nftables package in the image (apt-get install nftables)"
STEP = "apply the nftables transaction"


class NftCli:
    def __init__(self, binary: str = "nft", elements: ElementWriter | None = None) -> None:
        self.binary = binary
        self.elements = elements if elements is not None else ElementWriter()

    def _start(self, args: list[str], script: str | None, step: str) -> Spawned:
        """nft running with `script` as its input."""
        try:
            return Spawned([self.binary, *args], script)
        except FileNotFoundError:
            raise SetupError(f"the nft command was not found ({self.binary})", NFT_HINT) from None
        except PermissionError as error:
            raise ApplyError(step, str(error), Kind.NOT_PERMITTED) from None

    def _run(self, args: list[str], script: str | None, step: str) -> Completed:
        return self._start(args, script, step).wait()

    def apply(self, tx: Transaction) -> None:
        if not tx:
            return
        route = tx.route
        if route == BATCH:
            self.elements.write(Batch(op for op in tx.ops if isinstance(op, (AddElements, DeleteElements))))
        elif route == CREATE:
            table = tx.created
            assert table is not None
            self._create(table)
        else:
            self._script(str(tx))

    def read(self, table: TableSpec) -> Held:
        return readback.read(self.elements, table)

    def _create(self, table: TableSpec) -> None:
        """Create the table through nft, dormant, then fill its maps and wake it in one netlink
        batch: packets meet the whole table or none of it."""
        # nft builds the table while this process encodes the elements: each takes a few ms.
        process = self._start(["-f", "-"], creation_script(table), STEP)
        batch, refused = None, None
        try:
            batch = Batch(fill(table))
        except ValueError as error:  # an element the plan should never have made
            refused = ApplyError(STEP, str(error))
        finally:
            done = process.wait()
        if done.returncode != 0:
            raise ApplyError(STEP, explain_nft_error(done.stderr), nft_error_kind(done.stderr))
        try:
            if refused is not None:
                raise refused
            assert batch is not None
            batch.wake(table.family, table.name)
            self.elements.write(batch)
        except ApplyError as error:
            self._remove_dormant(table, error)
            raise

    def _remove_dormant(self, table: TableSpec, error: ApplyError) -> None:
        """Delete the table a refused fill left dormant. If that fails too, the caller hears
        both: the refusal, and what is left in the kernel."""
        try:
            self._script(f"delete table {table.ref}\n")
        except ApplyError as cleanup:
            raise ApplyError(
                STEP, f"{error.detail}; the dormant table {table.ref} could not be removed: {cleanup.detail}", error.kind
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
