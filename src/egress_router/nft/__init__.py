"""The kernel's NAT: one nftables table, changed only by whole transactions.

`NftBackend` is the narrow interface the reconcile step needs; `NftCli` drives the real kernel
(`nft` and netlink), `FakeNft` keeps tables in memory with the same all-or-nothing behaviour
for tests.
"""

from __future__ import annotations

from typing import Protocol

from .table import Element, Held, MapSpec, TableSpec, Transaction, diff

__all__ = ["Element", "Held", "MapSpec", "NftBackend", "TableSpec", "Transaction", "diff"]


class NftBackend(Protocol):
    def apply(self, tx: Transaction) -> None:
        """Run the transaction all-or-nothing; raise `ApplyError` (nothing changed) if refused."""

    def read(self, table: TableSpec) -> Held:
        """What the kernel holds of `table`: absent, another structure, or that structure with
        the elements its maps hold. Cheap: no listing of the table."""

    def list_table(self, family: str, name: str) -> str | None:
        """The table as the kernel holds it (nft's own listing), or None if it is absent."""
