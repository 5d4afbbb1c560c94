"""Transactions: the smallest change from the table the kernel holds to the one wanted."""

from __future__ import annotations

import pytest

from egress_router.errors import ApplyError
from egress_router.nft import MapSpec, TableSpec, Transaction, diff
from egress_router.nft.fake import FakeNft


def table(elements: dict[str, str], body: str = "chain c {\n}") -> TableSpec:
    return TableSpec(
        "inet",
        "t",
        (MapSpec("m", "inet_service", "ipv4_addr . inet_service", elements, counter=True),),
        body,
    )


def test_first_apply_replaces_the_table_atomically() -> None:
    text = str(diff(None, table({"80": "203.0.113.25 . 80"})))
    assert text.startswith("add table inet t\ndelete table inet t\ntable inet t {")
    assert text.endswith("add element inet t m { 80 : 203.0.113.25 . 80 }\n")


def test_same_table_needs_no_transaction() -> None:
    t = table({"80": "203.0.113.25 . 80"})
    assert not diff(t, t)
    assert str(diff(t, t)) == ""


def test_changed_elements_are_changed_in_place() -> None:
    old = table({"80": "203.0.113.25 . 80", "81": "203.0.113.25 . 81", "82": "203.0.113.25 . 82"})
    new = table({"80": "203.0.113.25 . 80", "81": "203.0.113.26 . 81", "83": "203.0.113.25 . 83"})
    assert str(diff(old, new)) == (
        "delete element inet t m { 82, 81 }\n"
        "add element inet t m { 81 : 203.0.113.26 . 81, 83 : 203.0.113.25 . 83 }\n"
    )


def test_a_changed_skeleton_replaces_the_table() -> None:
    old = table({"80": "203.0.113.25 . 80"})
    new = table({"80": "203.0.113.25 . 80"}, body="chain c {\n\tcounter\n}")
    assert diff(old, new).writes_table


def test_large_element_sets_are_chunked() -> None:
    many = {str(p): f"203.0.113.25 . {p}" for p in range(1, 1201)}
    text = str(diff(None, table(many)))
    assert text.count("add element inet t m {") == 3
    assert text.count(" : 203.0.113.25 . ") == 1200


def test_fake_applies_all_or_nothing() -> None:
    nft = FakeNft()
    nft.apply(diff(None, table({"80": "203.0.113.25 . 80"})))
    tx = Transaction()
    t = table({})
    tx.add_elements(t, "m", {"81": "203.0.113.25 . 81"})
    tx.delete_elements(t, "m", ["99"])  # not there: nft refuses the whole transaction
    with pytest.raises(ApplyError):
        nft.apply(tx)
    assert nft.elements("inet", "t", "m") == {"80": "203.0.113.25 . 80"}


def test_fake_refuses_to_add_a_key_with_another_value_like_nft() -> None:
    nft = FakeNft()
    nft.apply(diff(None, table({"80": "203.0.113.25 . 80"})))
    tx = Transaction()
    tx.add_elements(table({}), "m", {"80": "203.0.113.26 . 80"})
    with pytest.raises(ApplyError, match="File exists"):
        nft.apply(tx)


def test_diff_then_apply_converges_exactly() -> None:
    nft = FakeNft()
    old = table({str(p): f"203.0.113.25 . {p}" for p in range(1, 50)})
    new = table({str(p): f"203.0.113.26 . {p + 1}" for p in range(25, 75)})
    nft.apply(diff(None, old))
    nft.apply(diff(old, new))
    assert nft.elements("inet", "t", "m") == dict(new.maps[0].elements)
