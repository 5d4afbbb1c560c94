"""The per-name chains of the table, as text. Pure.

One chain per (family, protocol, remote port, name) that a rule names, and one per family for
a named fallback. Its one rule is the DNAT to one of the name's current addresses, the next
one for each new connection (`numgen inc`): a flat lookup, whatever the number of addresses.
A name without an address yet holds `accept`: the connection is not redirected, and the input
chain refuses it, as it does a port no rule names (never the fallback's).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from ..model import IPAddress, Name
from . import Answer

PREFIX = "dns"
# nft names are at most 255 bytes; a longer chain name keeps its start and a hash.
MAX_CHAIN = 200
UNRESOLVED = 'accept comment "no address yet"'
_NFT_FAMILY = {4: "ip", 6: "ip6"}


class Target(NamedTuple):
    """What a per-name chain DNATs to: `name`'s addresses of `family`, at `remote_port` for
    `protocol` (both None: the fallback, any protocol, the port unchanged)."""

    family: int
    name: Name
    protocol: str | None = None
    remote_port: int | None = None

    @property
    def chain(self) -> str:
        kind = "fallback" if self.protocol is None else f"{self.protocol}_{self.remote_port}"
        chain = f"{PREFIX}{self.family}_{kind}_{self.name}"
        if len(chain) > MAX_CHAIN:
            from hashlib import blake2b  # only for names this long

            digest = blake2b(chain.encode(), digest_size=8).hexdigest()
            chain = f"{chain[: MAX_CHAIN - 17]}_{digest}"
        return chain

    def rule(self, addresses: Iterable[IPAddress], since: float) -> str:
        """The chain's one rule for these addresses (sorted: an answer in another order is the
        same rule)."""
        ordered = sorted(a for a in addresses if a.version == self.family)
        if not ordered:
            return UNRESOLVED
        if self.protocol is None:
            values = [str(a) for a in ordered]
            head = ""
        else:
            values = [f"{a} . {self.remote_port}" for a in ordered]
            head = f"meta l4proto {self.protocol} "
        pick = ", ".join(f"{i} : {v}" for i, v in enumerate(values))
        return (
            f"{head}dnat {_NFT_FAMILY[self.family]} to numgen inc mod {len(values)} map {{ {pick} }} "
            f'comment "since {int(since)}"'
        )


def parse_chain(chain: str) -> tuple[int, str | None, int | None, str] | None:
    """(family, protocol, remote port, name) of a per-name chain's name; None for another chain."""
    if not chain.startswith(PREFIX) or len(chain) < len(PREFIX) + 3 or chain[len(PREFIX)] not in "46":
        return None
    family = int(chain[len(PREFIX)])
    rest = chain[len(PREFIX) + 2 :]
    kind, _, name = rest.partition("_")
    if kind == "fallback":
        return family, None, None, name
    protocol = kind
    port, _, name = name.partition("_")
    if not port.isdigit():
        return None
    return family, protocol, int(port), name


class Named(NamedTuple):
    """What the named rules add to the table: prerouting rules (a verdict map per protocol and
    family, by local port), the chains they jump to (declared empty), and those chains' rules."""

    prerouting: list[str]
    declarations: list[str]
    dynamic: tuple[tuple[str, str], ...]


def named(
    rules: Iterable[tuple[str, int, Name, int]],
    fallback: Name | None,
    families: tuple[int, ...],
    answers: dict[Name, Answer],
) -> tuple[Named, dict[int, str]]:
    """The table's part for named rules `(protocol, local port, name, remote port)` and a named
    `fallback`, for the source's `families`, with each name's current `answers`; and the chain
    each family's fallback rule jumps to."""
    targets: dict[str, Target] = {}
    by_key: dict[tuple[str, int], dict[int, str]] = {}
    for protocol, port, name, remote in rules:
        for family in families:
            target = Target(family, name, protocol, remote)
            targets.setdefault(target.chain, target)
            by_key.setdefault((protocol, family), {})[port] = target.chain
    fallbacks: dict[int, str] = {}
    if fallback is not None:
        for family in families:
            target = Target(family, fallback)
            targets[target.chain] = target
            fallbacks[family] = target.chain
    pre = []
    for (protocol, family), ports in sorted(by_key.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        verdicts = ", ".join(f"{port} : goto {chain}" for port, chain in sorted(ports.items()))
        nfproto = "ipv4" if family == 4 else "ipv6"
        pre.append(f"meta nfproto {nfproto} {protocol} dport vmap {{ {verdicts} }}")
    declarations = []
    dynamic = []
    for chain, target in sorted(targets.items()):
        declarations += [f"chain {chain} {{", "}"]
        answer = answers.get(target.name, Answer())
        dynamic.append((chain, target.rule(answer.addresses, answer.since_of(target.family))))
    return Named(pre, declarations, tuple(dynamic)), fallbacks
