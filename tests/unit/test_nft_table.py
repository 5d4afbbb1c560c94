"""Transactions: the smallest change from the table the kernel holds to the one wanted, the
way each is applied, and the text that shows it."""

from __future__ import annotations

import pytest

from egress_router.errors import ApplyError, Kind
from egress_router.nft import Element, MapSpec, TableSpec, Transaction, diff
from egress_router.nft.fake import FakeNft
from egress_router.nft.table import BATCH, CREATE, SCRIPT


def els(*items: tuple[int, str, int]) -> dict[int, Element]:
    return {port: Element(port, address, remote) for port, address, remote in items}


def table(elements: dict[int, Element], body: str = "chain c {\n}") -> TableSpec:
    return TableSpec("inet", "t", (MapSpec("m", 4, elements),), body, "managed")


def test_an_element_is_written_as_nft_writes_it() -> None:
    assert str(Element(8080, "203.0.113.26", 80)) == "8080 : 203.0.113.26 . 80"
    assert MapSpec("m", 6, {}, size=1024).declaration() == (
        "\tmap m {\n\t\ttype inet_service : ipv6_addr . inet_service\n\t\tsize 1024\n\t}"
    )


def test_first_apply_replaces_the_table_atomically_in_one_script() -> None:
    tx = diff(None, table(els((80, "203.0.113.25", 80))))
    text = str(tx)
    assert tx.route == SCRIPT
    assert text.startswith("add table inet t\ndelete table inet t\ntable inet t {")
    assert text.endswith("add element inet t m { 80 : 203.0.113.25 . 80 }\n")


def test_a_creation_shows_the_dormant_structure_then_the_batch() -> None:
    tx = Transaction()
    tx.create_table(table(els((80, "203.0.113.25", 80))))
    text = str(tx)
    assert tx.route == CREATE
    structure, batch = text.split("# one netlink batch: fill the maps, wake the table\n")
    assert structure.startswith("create table inet t {\n\tcomment \"managed; skeleton ")
    assert "flags dormant" in structure and "add element" not in structure
    assert batch == "add element inet t m { 80 : 203.0.113.25 . 80 }\nadd table inet t\n"


def test_the_tag_names_the_structure_not_the_elements() -> None:
    one, other = table(els((80, "203.0.113.25", 80))), table(els((81, "203.0.113.26", 81)))
    assert one.tag == other.tag and one.full_comment == f"managed; skeleton {one.tag}"
    assert table({}, body="chain c {\n\tcounter\n}").tag != one.tag
    assert TableSpec("inet", "t", (MapSpec("m", 4, {}, size=2048),), "chain c {\n}", "managed").tag != one.tag


def test_same_table_needs_no_transaction() -> None:
    t = table(els((80, "203.0.113.25", 80)))
    assert not diff(t, t)
    assert str(diff(t, t)) == ""


def test_changed_elements_are_changed_in_place_by_one_batch() -> None:
    old = table(els((80, "203.0.113.25", 80), (81, "203.0.113.25", 81), (82, "203.0.113.25", 82)))
    new = table(els((80, "203.0.113.25", 80), (81, "203.0.113.26", 81), (83, "203.0.113.25", 83)))
    tx = diff(old, new)
    assert tx.route == BATCH and not tx.writes_table
    assert str(tx) == (
        "delete element inet t m { 82, 81 }\n"
        "add element inet t m { 81 : 203.0.113.26 . 81, 83 : 203.0.113.25 . 83 }\n"
    )


def test_a_changed_skeleton_replaces_the_table() -> None:
    old = table(els((80, "203.0.113.25", 80)))
    new = table(els((80, "203.0.113.25", 80)), body="chain c {\n\tcounter\n}")
    assert diff(old, new).writes_table and diff(old, new).route == SCRIPT


def test_large_element_sets_are_chunked() -> None:
    many = els(*((p, "203.0.113.25", p) for p in range(1, 1201)))
    text = str(diff(None, table(many)))
    assert text.count("add element inet t m {") == 3
    assert text.count(" : 203.0.113.25 . ") == 1200


def test_fake_applies_all_or_nothing_and_says_why_by_kind() -> None:
    nft = FakeNft()
    nft.apply(diff(None, table(els((80, "203.0.113.25", 80)))))
    tx = Transaction()
    t = table({})
    tx.add_elements(t, "m", [Element(81, "203.0.113.25", 81)])
    tx.delete_elements(t, "m", [99])  # not there: the whole transaction is refused
    with pytest.raises(ApplyError) as caught:
        nft.apply(tx)
    assert caught.value.kind is Kind.NOT_FOUND
    assert nft.elements("inet", "t", "m") == {"80": "203.0.113.25 . 80"}


def test_fake_refuses_to_add_a_key_with_another_value_like_the_kernel() -> None:
    nft = FakeNft()
    nft.apply(diff(None, table(els((80, "203.0.113.25", 80)))))
    tx = Transaction()
    tx.add_elements(table({}), "m", [Element(80, "203.0.113.26", 80)])
    with pytest.raises(ApplyError) as caught:
        nft.apply(tx)
    assert caught.value.kind is Kind.EXISTS


def test_fake_read_gives_the_elements_only_for_its_own_structure() -> None:
    nft = FakeNft()
    t = table(els((80, "203.0.113.25", 80)))
    assert not nft.read(t).exists
    nft.apply(diff(None, t))
    held = nft.read(table({}))
    assert held.exists and held.table == t
    other = nft.read(table({}, body="chain c {\n\tcounter\n}"))
    assert other.exists and other.table is None


def test_diff_then_apply_converges_exactly() -> None:
    nft = FakeNft()
    old = table(els(*((p, "203.0.113.25", p) for p in range(1, 50))))
    new = table(els(*((p, "203.0.113.26", p + 1) for p in range(25, 75))))
    nft.apply(diff(None, old))
    nft.apply(diff(old, new))
    assert nft.read(new).table == new
