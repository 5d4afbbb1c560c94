"""The kernel's NAT: one nftables table, changed only by whole transactions.

`NftBackend` is the narrow interface the reconcile step needs; `NftCli` drives the real `nft`,
`FakeNft` keeps tables in memory with the same all-or-nothing behaviour for tests.
"""

from __future__ import annotations

from typing import Protocol

from .table import MapSpec, TableSpec, Transaction, diff

__all__ = ["MapSpec", "NftBackend", "TableSpec", "Transaction", "diff"]


class NftBackend(Protocol):
    def apply(self, tx: Transaction) -> None:
        """Run the transaction all-or-nothing; raise `ApplyError` (nothing changed) if refused."""

    def list_table(self, family: str, name: str) -> str | None:
        """The table as the kernel holds it (nft's own listing), or None if it is absent."""
