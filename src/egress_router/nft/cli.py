"""`NftBackend` on the real kernel, through one `nft -f -` per transaction."""

from __future__ import annotations

import subprocess

from ..errors import ApplyError, SetupError
from .table import Transaction

NFT_HINT = "install the nftables package in the image (apt-get install nftables)"


class NftCli:
    def __init__(self, binary: str = "nft") -> None:
        self.binary = binary

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
        done = self._run(["-f", "-"], str(tx), "apply the nftables transaction")
        if done.returncode != 0:
            raise ApplyError("apply the nftables transaction", explain_nft_error(done.stderr))

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
