"""The router's table as the kernel holds it, read back: for the daemon's drift check, its
metrics and `status`.

The router writes through `nft` and the element writer (all-or-nothing transactions); this
module only reads: the table as `nft -j` lists it (map elements with their counters, named
counters, the fallback rules). `NftTableReader` asks the real kernel; `FakeTableReader`
(`nft.fake`) answers from the in-memory fakes, so the daemon's tests need no root. The network
side is read by `network` (`NetBackend.snapshot`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..schema import FAMILIES, fallback_counter_name
from .cli import NftCli

# Keys whose values change while the rules stay the same: dropped from a table's shape.
# dns.chains.PREFIX, the start of every per-name chain: spelt here so that reading back a table
# without names imports nothing of dns/ (a unit test holds the two equal).
NAMED_PREFIX = "dns"
_VOLATILE = frozenset({"handle", "packets", "bytes", "metainfo"})


@dataclass(frozen=True)
class Entry:
    """One element of a map or set as nft lists it: `key : value` (text), with its counter."""

    key: str
    value: str
    packets: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class NamedChain:
    """A per-name chain as the kernel holds it: the name's addresses in use, since when."""

    name: str
    family: int
    protocol: str | None  # None: the fallback's
    remote_port: int | None
    addresses: tuple[str, ...] = ()
    since: int = 0  # Unix time; 0: no address yet


@dataclass(frozen=True)
class TableState:
    """The table as the kernel holds it."""

    shape: str  # declarations, rules and elements without counter values or handles
    maps: Mapping[str, Mapping[str, Entry]] = field(default_factory=dict)
    counters: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # name: packets, bytes
    fallbacks: Mapping[int, str] = field(default_factory=dict)  # family: address (or name)
    names: Mapping[str, NamedChain] = field(default_factory=dict)  # by chain
    named_ports: Mapping[tuple[str, int], Mapping[str, str]] = field(default_factory=dict)  # (protocol, family): port: chain


class TableReader(Protocol):
    def read_table(self, family: str, name: str) -> TableState | None:
        """The table, or None when it is absent. Raises `ApplyError` when nft cannot list it."""



def parse_table(document: str) -> TableState:
    """`nft -j list table` output -> `TableState`."""
    objects = [o for o in json.loads(document).get("nftables", []) if "metainfo" not in o]
    maps: dict[str, dict[str, Entry]] = {}
    counters: dict[str, tuple[int, int]] = {}
    fallbacks: dict[int, str] = {}
    names: dict[str, NamedChain] = {}
    named_ports: dict[tuple[str, int], dict[str, str]] = {}
    for obj in objects:
        if "map" in obj:
            maps[obj["map"]["name"]] = _elements(obj["map"].get("elem", []))
        elif "set" in obj:  # the byte counters: keys only, each with its counter
            maps[obj["set"]["name"]] = _elements(obj["set"].get("elem", []))
        elif "counter" in obj:
            c = obj["counter"]
            counters[c["name"]] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
        elif "rule" in obj:
            rule = obj["rule"]
            fallbacks.update(_fallback(rule.get("expr", [])))
            _named(rule, names, named_ports)
    return TableState(_shape(objects), maps, counters, fallbacks, names, named_ports)


def _named(rule: dict[str, Any], names: dict[str, NamedChain], ports: dict[tuple[str, int], dict[str, str]]) -> None:
    """A named rule's verdict map (port -> chain), or a per-name chain's rule."""
    vmaps = [expr["vmap"] for expr in rule.get("expr", []) if "vmap" in expr]
    if not vmaps and not rule.get("chain", "").startswith(NAMED_PREFIX):
        return  # every rule of a table without names: dns/ stays unloaded (drift checks, status)
    from ..dns.chains import parse_chain

    for vmap in vmaps:
        for key, verdict in vmap.get("data", {}).get("set", []):
            target = verdict.get("goto", {}).get("target", "") if isinstance(verdict, dict) else ""
            parsed = parse_chain(target)
            if parsed is not None and parsed[1] is not None:
                ports.setdefault((parsed[1], parsed[0]), {})[str(key)] = target
    parsed = parse_chain(rule.get("chain", ""))
    if parsed is None:
        return
    family, protocol, remote, name = parsed
    addresses: list[str] = []
    for expr in rule.get("expr", []):
        if "dnat" in expr:
            mapped = expr["dnat"].get("addr", {}).get("map", {}).get("data", {}).get("set", [])
            addresses += [render(value).partition(" . ")[0] for _, value in mapped]
    comment = str(rule.get("comment", ""))
    since = int(comment.split()[-1]) if comment.startswith("since ") and comment.split()[-1].isdigit() else 0
    names[rule["chain"]] = NamedChain(name, family, protocol, remote, tuple(addresses), since)


def _shape(objects: list[Any]) -> str:
    """What the router owns of the table: chains, rules, map elements, and the declarations of
    sets and counters. Never what traffic writes: counter values, and the elements of sets.
    The router writes elements into maps only; every set of its table is filled by the packet
    path. Told apart by kind (set or map), not by `flags dynamic`: nft 1.0.6 leaves that flag out
    of its JSON for these sets (tests/data/nft/ holds its real output)."""
    owned = [_without_elements(o) if "set" in o else o for o in objects]
    # Elements of a hash map list in bucket order, which changes when the kernel resizes the
    # table: sorted, two listings of the same rules compare equal.
    return json.dumps(_strip(owned), sort_keys=True)


def _without_elements(obj: dict[str, Any]) -> dict[str, Any]:
    return {"set": {k: v for k, v in obj["set"].items() if k != "elem"}}


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        stripped = {k: _strip(v) for k, v in value.items() if k not in _VOLATILE}
        if isinstance(stripped.get("elem"), list):
            stripped["elem"] = sorted(stripped["elem"], key=lambda e: json.dumps(e, sort_keys=True))
        return stripped
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _elements(items: list[Any]) -> dict[str, Entry]:
    out: dict[str, Entry] = {}
    for item in items:
        key_part, value = item if isinstance(item, list) else (item, None)
        counter: dict[str, int] = {}
        if isinstance(key_part, dict) and "elem" in key_part:
            counter = key_part["elem"].get("counter") or {}
            key_part = key_part["elem"]["val"]
        key = render(key_part)
        out[key] = Entry(
            key, render(value), int(counter.get("packets", 0)), int(counter.get("bytes", 0))
        )
    return out


def render(value: Any) -> str:
    """A JSON value as nft's text syntax writes it (`203.0.113.25 . 80`, `return`)."""
    if value is None:
        return ""
    if isinstance(value, dict):
        if "concat" in value:
            return " . ".join(render(v) for v in value["concat"])
        if len(value) == 1:  # a verdict: {"return": null}, {"jump": {"target": ...}}
            return str(next(iter(value)))
    return str(value)


# The fallback rule of each family is the one that counts into that family's fallback counter.
_FALLBACK_COUNTERS = {fallback_counter_name(family): family for family in FAMILIES}


def _fallback(expr: list[Any]) -> dict[int, str]:
    """The prerouting rule `... counter name fallbackN dnat ... to ADDRESS`."""
    names = [e["counter"] for e in expr if isinstance(e.get("counter"), str)]
    dnat = [e["dnat"] for e in expr if "dnat" in e]
    goto = [e["goto"].get("target", "") for e in expr if isinstance(e.get("goto"), dict)]
    if not names or names[0] not in _FALLBACK_COUNTERS:
        return {}
    if not dnat and goto:  # a named fallback: to its chain
        from ..dns.chains import parse_chain

        parsed = parse_chain(goto[0])
        return {} if parsed is None else {_FALLBACK_COUNTERS[names[0]]: parsed[3]}
    if not dnat:
        return {}
    return {_FALLBACK_COUNTERS[names[0]]: render(dnat[0].get("addr"))}


class NftTableReader:
    """`TableReader` on the real kernel, through the router's own `nft` adapter."""

    def __init__(self, nft: NftCli | None = None) -> None:
        self.nft = nft if nft is not None else NftCli()

    def read_table(self, family: str, name: str) -> TableState | None:
        listing = self.nft.list_table(family, name, as_json=True)
        return None if listing is None else parse_table(listing)
