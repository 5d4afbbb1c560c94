"""nft's own messages, turned into a line a user can act on."""

from __future__ import annotations

from egress_router.nft.cli import explain_nft_error


def test_the_first_error_line_is_kept() -> None:
    stderr = (
        "/dev/stdin:3:1-20: Error: Could not process rule: File exists\n"
        "create table inet egress_router\n^^^^^^^^\n"
    )
    assert explain_nft_error(stderr) == "Could not process rule: File exists"


def test_a_kernel_without_nf_tables_is_named() -> None:
    stderr = "/dev/stdin:1:1-30: Error: Could not process rule: Not supported\n"
    assert "this kernel lacks nf_tables or one of its modules" in explain_nft_error(stderr)
    assert "lacks nf_tables" in explain_nft_error("netlink: Error: Protocol not supported\n")


def test_a_missing_capability_is_named() -> None:
    stderr = "Error: Could not process rule: Operation not permitted\n"
    assert "needs the NET_ADMIN capability" in explain_nft_error(stderr)


def test_no_message_at_all() -> None:
    assert explain_nft_error("") == "nft failed without a message"
