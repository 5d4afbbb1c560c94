"""Map elements written over netlink (`NftCli` with its `ElementWriter`), on the real kernel.

Every test runs in one network namespace of its own (no interfaces needed: only the nftables
ruleset of the namespace is used) and reads the result back with `nft -j list map`, which is
the kernel's view, not the writer's. Transactions that must not run nft at all are applied
through an `NftCli` whose nft binary does not exist: any nft run would raise `SetupError`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from egress_router.errors import ApplyError, Kind
from egress_router.lab.netns import delete_namespaces, in_netns, ip
from egress_router.nft import Element, MapSpec, TableSpec, Transaction, diff
from egress_router.nft import elements as nl
from egress_router.nft.cli import NftCli
from egress_router.nft.table import AddElements, DeleteElements
from egress_router.plan import map_size

pytestmark = pytest.mark.lab

T = TypeVar("T")
MAPS = (("tcp4", 4), ("udp4", 4), ("sctp4", 4), ("tcp6", 6), ("udp6", 6), ("sctp6", 6))
NO_NFT = "/nonexistent/nft"  # an NftCli that must not run nft
# The router's NAT chain: every map bound to a rule, as in the router's own table.
BODY = "\n".join(
    [
        "chain prerouting {",
        "\ttype nat hook prerouting priority dstnat; policy accept;",
        *(
            f"\tdnat {'ip' if name[-1] == '4' else 'ip6'} to {name[:-1]} dport map @{name}"
            for name, _ in MAPS
        ),
        "}",
    ]
)


def table(
    name: str = "t", sizes: dict[str, int] | None = None, **elements: dict[str, str]
) -> TableSpec:
    maps = []
    for map_name, family in MAPS:
        items = elements.get(map_name, {})
        size = (sizes or {}).get(map_name, map_size(len(items)))
        maps.append(MapSpec(map_name, family, typed(items), size=size))
    return TableSpec("inet", name, tuple(maps), BODY, "managed")


def typed(items: dict[str, str]) -> dict[int, Element]:
    """{"80": "203.0.113.25 . 80"} (nft's text) -> the plan's typed elements."""
    out = {}
    for key, value in items.items():
        address, _, port = value.partition(" . ")
        out[int(key)] = Element(int(key), str(ipaddress.ip_address(address)), int(port))
    return out


def many(count: int, start: int = 1) -> dict[str, str]:
    """`count` IPv4 elements with distinct keys over the documentation ranges."""
    nets = ("192.0.2", "198.51.100", "203.0.113")
    return {
        str(k): f"{nets[k % 3]}.{k % 256} . {(k * 7) % 65535 + 1}"
        for k in range(start, start + count)
    }


def normal(value: str) -> str:
    address, port = value.split(" . ")
    return f"{ipaddress.ip_address(address)} . {int(port)}"


class Kernel:
    """The namespace's nftables, and the NftClis of a test (closed when it ends)."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.clis: list[NftCli] = []

    def inside(self, function: Callable[[], T]) -> T:
        return in_netns(self.namespace, function)

    def cli(self, binary: str = "nft") -> NftCli:
        self.clis.append(NftCli(binary=binary))
        return self.clis[-1]

    def apply(self, cli: NftCli, tx: Transaction) -> None:
        # The writer's socket is opened on the first apply, in the namespace, and stays there.
        self.inside(lambda: cli.apply(tx))

    def create(self, spec: TableSpec) -> None:
        tx = Transaction()
        tx.create_table(spec)
        self.apply(self.cli(), tx)

    def nft(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.inside(
            lambda: subprocess.run(
                ["nft", *args], capture_output=True, text=True, timeout=30, check=False
            )
        )

    def elements(self, map_name: str, name: str = "t") -> dict[str, str]:
        done = self.nft("-j", "list", "map", "inet", name, map_name)
        assert done.returncode == 0, done.stderr
        (found,) = [item["map"] for item in json.loads(done.stdout)["nftables"] if "map" in item]
        return {
            str(key): normal(f"{v['concat'][0]} . {v['concat'][1]}")
            for key, v in found.get("elem", [])
        }

    def all_elements(self, name: str = "t") -> dict[str, dict[str, str]]:
        return {map_name: self.elements(map_name, name) for map_name, _ in MAPS}

    def listing(self) -> str:
        done = self.nft("list", "ruleset")
        assert done.returncode == 0, done.stderr
        return done.stdout

    def has_table(self, name: str = "t") -> bool:
        return self.nft("list", "table", "inet", name).returncode == 0

    def close(self) -> None:
        for cli in self.clis:
            cli.elements.close()
        done = self.nft("flush", "ruleset")
        assert done.returncode == 0, done.stderr


def expected(spec: TableSpec) -> dict[str, dict[str, str]]:
    return {m.name: {str(p): f"{e.address} . {e.remote_port}" for p, e in m.elements.items()} for m in spec.maps}


@pytest.fixture(scope="module")
def namespace() -> Iterator[str]:
    # The session fixture of conftest.py checks that no "erl-<pid>-" namespace outlives the run.
    name = f"erl-{os.getpid()}-{secrets.token_hex(2)}-nl"
    ip(["netns", "add", name])
    try:
        yield name
    finally:
        delete_namespaces([name])


@pytest.fixture
def kernel(namespace: str) -> Iterator[Kernel]:
    k = Kernel(namespace)
    try:
        yield k
    finally:
        k.close()


@pytest.fixture
def nft_scripts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every script `NftCli` hands to nft besides a new table's skeleton: the fallbacks."""
    scripts: list[str] = []
    run_script = NftCli._script

    def recording(self: NftCli, script: str) -> None:
        scripts.append(script)
        run_script(self, script)

    monkeypatch.setattr(NftCli, "_script", recording)
    return scripts


# -- loading -------------------------------------------------------------------------------------


def test_a_new_table_holds_exactly_the_elements_given(
    kernel: Kernel, nft_scripts: list[str]
) -> None:
    spec = table(
        tcp4={**many(10_000), "65535": "203.0.113.255 . 65535", "1": "192.0.2.0 . 1"},
        udp4={"53": "203.0.113.25 . 5353"},
        sctp4={"5000": "203.0.113.27 . 5000"},
        tcp6={"443": "2001:db8::1 . 8443", "80": "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff . 80"},
        udp6={"53": "2001:db8:2::25 . 53"},
        sctp6={"9": "2001:db8:: . 9"},
    )
    kernel.create(spec)
    assert nft_scripts == [], "the elements went through nft, not netlink"
    assert kernel.all_elements() == expected(spec)


def test_no_packet_meets_a_new_table_before_its_maps_are_filled(
    kernel: Kernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With empty maps a fallback rule would take every mapped port: until the batch that fills
    # the maps commits, the table must be dormant (its chains unhooked), and awake after.
    seen: list[str] = []
    write = nl.ElementWriter.write

    def look_first(writer: nl.ElementWriter, batch: nl.Batch) -> None:
        seen.append(kernel.listing())
        write(writer, batch)

    monkeypatch.setattr(nl.ElementWriter, "write", look_first)
    kernel.create(table(tcp4=many(100)))
    (during,) = seen
    assert "table inet t {\n\tflags dormant" in during
    assert "flags dormant" not in kernel.listing()
    assert len(kernel.elements("tcp4")) == 100


def test_a_50000_element_batch_larger_than_the_socket_buffer_loads(kernel: Kernel) -> None:
    spec = table(sizes={"tcp4": 65536})
    kernel.create(spec)
    elements = many(50_000)
    tx = Transaction()
    tx.add_elements(spec, "tcp4", typed(elements).values())
    batch = nl.Batch(op for op in tx.ops if isinstance(op, (AddElements, DeleteElements)))
    assert len(batch.encode(1)[0]) > 4 * 212_992
    kernel.apply(kernel.cli(NO_NFT), tx)
    assert kernel.elements("tcp4") == {k: normal(v) for k, v in elements.items()}


def test_without_room_in_the_socket_a_new_table_is_refused_whole_not_rerouted(
    kernel: Kernel, nft_scripts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The default send buffer (208 KB) cannot take 20,000 elements: the kernel says EMSGSIZE.
    # Nothing else is tried behind the caller's back: the dormant table goes, the error stays.
    monkeypatch.setattr(nl, "make_room", lambda sock, size: None)
    spec = table(tcp4=many(20_000), tcp6={"443": "2001:db8::1 . 8443"})
    with pytest.raises(ApplyError, match="send the batch: Message too long"):
        kernel.create(spec)
    assert nft_scripts == ["delete table inet t\n"]
    assert not kernel.has_table()


# -- reading back ----------------------------------------------------------------------------------


def test_a_restart_reads_exactly_what_the_kernel_holds(kernel: Kernel) -> None:
    spec = table(tcp4=many(10_000), udp6={"53": "2001:db8::53 . 53"}, sctp4={"9": "192.0.2.9 . 9"})
    kernel.create(spec)
    held = kernel.inside(lambda: kernel.cli(NO_NFT).read(spec.with_elements({})))
    assert held.exists and held.table == spec


def test_a_table_of_another_structure_or_none_is_told_apart(kernel: Kernel) -> None:
    cli = kernel.cli(NO_NFT)
    assert kernel.inside(lambda: cli.read(table())) == (False, None)
    kernel.create(table(tcp4=many(10)))
    other = table()._replace(body=BODY.replace("policy accept", "policy drop"))
    assert kernel.inside(lambda: cli.read(other)) == (True, None)
    done = kernel.nft("add", "table", "inet", "t", "{", "comment", '"someone else"', ";", "}")
    assert done.returncode == 0 or "comment" in done.stderr  # nft may refuse to change it
    assert kernel.inside(lambda: cli.read(table())).exists


# -- changing --------------------------------------------------------------------------------------


def test_a_reload_changes_exactly_the_changed_elements(kernel: Kernel) -> None:
    old = table(tcp4=many(10_000), udp6={"53": "2001:db8::53 . 53"})
    kernel.create(old)
    changed = {str(p): f"{e.address} . {e.remote_port}" for p, e in old.maps[0].elements.items()}
    for key in ("1", "2", "777", "5000", "9999", "10000", "1234", "4321", "42", "8080"):
        changed[key] = "198.51.100.200 . 4444"
    new = table(tcp4=changed, udp6={"53": "2001:db8::53 . 53"})
    tx = diff(old, new)
    assert not tx.writes_table
    kernel.apply(kernel.cli(NO_NFT), tx)
    assert kernel.all_elements() == expected(new)


def test_a_transaction_refused_part_way_changes_nothing(kernel: Kernel) -> None:
    spec = table(tcp4=many(100), udp4={"53": "203.0.113.25 . 5353"})
    kernel.create(spec)
    before = kernel.listing()
    tx = Transaction()
    tx.add_elements(spec, "tcp4", [Element(20000, "203.0.113.26", 80)])
    tx.delete_elements(spec, "udp4", [53])
    tx.delete_elements(spec, "udp4", [4242])  # not there: the kernel refuses this one
    with pytest.raises(ApplyError) as caught:
        kernel.apply(kernel.cli(NO_NFT), tx)
    assert caught.value.kind is Kind.NOT_FOUND
    assert "delete elements from inet t udp4: No such file or directory" in str(caught.value)
    assert "add elements" not in str(caught.value), "only the refused message is blamed"
    assert kernel.listing() == before


def test_a_map_of_a_missing_table_is_named_in_the_error(kernel: Kernel) -> None:
    tx = Transaction()
    tx.add_elements(table("absent"), "tcp4", [Element(80, "203.0.113.25", 80)])
    with pytest.raises(ApplyError) as caught:
        kernel.apply(kernel.cli(NO_NFT), tx)
    assert str(caught.value) == (
        "failed to apply the nftables transaction: "
        "add elements to inet absent tcp4: No such file or directory"
    )


def test_a_new_table_whose_elements_are_refused_is_removed_again(kernel: Kernel) -> None:
    # A map declared for 2 elements refuses a third (ENFILE) only once nft has built the table.
    full = table(sizes={"udp4": 2}, tcp4=many(10), udp4=many(3, start=50))
    tx = Transaction()
    tx.create_table(full)
    with pytest.raises(ApplyError) as caught:
        kernel.apply(kernel.cli(), tx)
    assert "add elements to inet t udp4" in str(caught.value)
    assert not kernel.has_table(), "a half-built table was left behind"
    kernel.create(table(tcp4=many(10)))  # so a retry can create it
    assert kernel.elements("tcp4") == {k: normal(v) for k, v in many(10).items()}


def test_one_writer_carries_many_transactions(kernel: Kernel) -> None:
    current = table(tcp4=many(1000))
    kernel.create(current)
    cli = kernel.cli(NO_NFT)
    sequences: list[int] = []
    sockets = set()
    refused = 0
    for n in range(60):
        if n % 10 == 9:  # a refused one now and then: the next must not see its answers
            tx = Transaction()
            tx.add_elements(current, "tcp4", [Element(30_000 + n, "192.0.2.9", 9)])
            tx.delete_elements(current, "udp4", [7])
            with pytest.raises(ApplyError, match="udp4: No such file or directory"):
                kernel.apply(cli, tx)
            refused += 1
        else:
            elements = dict(current.maps[0].elements)
            elements[20_000 + n] = Element(20_000 + n, f"203.0.113.{n}", n + 1)  # a new key
            elements[n + 1] = Element(n + 1, f"198.51.100.{n}", n + 100)  # a changed value
            del elements[500 + n]  # a deleted key
            following = current.with_elements({"tcp4": elements})
            kernel.apply(cli, diff(current, following))
            current = following
        assert cli.elements._socket is not None
        sockets.add(id(cli.elements._socket))
        sequences.append(cli.elements._sequence)
    assert refused == 6
    assert len(sockets) == 1, "the socket was reopened"
    assert sequences == sorted(set(sequences)), "sequence numbers went back"
    assert kernel.all_elements() == expected(current)


def test_a_new_table_with_a_bad_address_is_refused_whole(kernel: Kernel) -> None:
    tx = Transaction()
    bad = table()
    tx.create_table(bad.with_elements({"tcp4": {80: Element(80, "203.0.113.300", 80)}}))
    try:
        with pytest.raises(ApplyError):
            kernel.apply(kernel.cli(), tx)
    finally:
        assert not kernel.has_table(), "a table without elements was left behind"
