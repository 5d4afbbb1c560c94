"""One lookup of a name through the pod's resolver: the nameservers of its resolv.conf
(cluster DNS on Kubernetes), the name as written (absolute: no search list, no `ndots`), A and
AAAA as the source's families ask. dnspython is imported here only.

The router's own queries are not marked by its table: they follow the pod's main routing
table, out of the pod interface (eth0), never the egress interface.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import NamedTuple

from ..errors import EgressRouterError
from ..model import IPAddress, IPInterface, Name

LIFETIME = 3.0  # seconds a lookup may take in all, over every nameserver
_RECORDS = {4: "A", 6: "AAAA"}


class Lookup(NamedTuple):
    """What one lookup found: the usable addresses, the shortest TTL of the records they came
    from, and the addresses refused (with why), to be warned about."""

    addresses: tuple[IPAddress, ...]
    ttl: int
    refused: tuple[tuple[IPAddress, str], ...] = ()
    # The families asked whose answer had no usable address, while another's had (a dual-stack
    # source), with what the resolver said: `legacy` keeps that family's last addresses.
    empty: tuple[tuple[int, str], ...] = ()


class DnsError(EgressRouterError):
    """A name did not resolve: `answer` is what the resolver said (NXDOMAIN, a timeout...)."""

    def __init__(self, name: Name, answer: str) -> None:
        super().__init__(f"the destination name {name} did not resolve: {answer}")
        self.name, self.answer = name, answer


def own_addresses(sources: Iterable[IPInterface], pod: Iterable[IPAddress]) -> tuple[IPAddress, ...]:
    """The router's own addresses, which an answer must never be: the sources, the pod's."""
    return (*(s.ip for s in sources), *pod)


def refusal(address: IPAddress, own: Iterable[IPAddress]) -> str | None:
    """Why an answer cannot be a destination (None: it can)."""
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_unspecified:
        return "unspecified"
    if address.version == 4 and int(address) == 0xFFFFFFFF:
        return "broadcast"
    if address in own:
        return "the router's own address"
    return None


class Resolver:
    """Lookups through the nameservers of `resolv_conf`, re-read for every lookup (a pod's
    resolv.conf does not change, the lab's may)."""

    def __init__(self, resolv_conf: str = "/etc/resolv.conf", lifetime: float = LIFETIME) -> None:
        self.resolv_conf, self.lifetime = resolv_conf, lifetime

    def lookup(self, name: Name, families: Iterable[int], own: Iterable[IPAddress] = ()) -> Lookup:
        """The name's usable addresses; raises `DnsError` when there is none."""
        import dns.exception
        import dns.name
        import dns.resolver

        try:
            resolver = dns.resolver.Resolver(filename=self.resolv_conf)
        except (OSError, dns.exception.DNSException) as error:
            raise DnsError(name, f"cannot read the nameservers of {self.resolv_conf}: {error}") from None
        resolver.search = []  # absolute names only: no search domain, no ndots
        resolver.use_search_by_default = False
        resolver.lifetime = self.lifetime
        resolver.timeout = min(resolver.timeout, self.lifetime / 2)
        qname = dns.name.from_text(name.text)  # absolute: a trailing dot is implied
        found: list[IPAddress] = []
        ttls: list[int] = []
        empty: list[str] = []
        asked = sorted(set(families))
        for family in asked:
            record = _RECORDS[family]
            try:
                answer = resolver.resolve(qname, record, search=False, raise_on_no_answer=False)
            except dns.resolver.NXDOMAIN:
                raise DnsError(name, "NXDOMAIN (no such name)") from None
            except dns.resolver.LifetimeTimeout:
                raise DnsError(name, f"timeout: no answer within {self.lifetime:g} s") from None
            except dns.resolver.NoNameservers as error:
                raise DnsError(name, f"no nameserver answered ({_short(error)})") from None
            except dns.exception.DNSException as error:
                raise DnsError(name, _short(error)) from None
            if answer.rrset is None:
                empty.append(record)
                continue
            ttls.append(answer.rrset.ttl)
            found += [ipaddress.ip_address(r.address) for r in answer.rrset]
        own = tuple(own)
        usable, refused = [], []
        for address in dict.fromkeys(found):
            why = refusal(address, own)
            if why is None:
                usable.append(address)
            else:
                refused.append((address, why))
        if not usable:
            raise DnsError(name, _nothing_usable(refused, empty))
        lacking = tuple(
            (family, _nothing_usable([r for r in refused if r[0].version == family], [_RECORDS[family]]))
            for family in asked
            if not any(a.version == family for a in usable)
        )
        return Lookup(tuple(sorted(usable, key=lambda a: (a.version, int(a)))), min(ttls), tuple(refused), lacking)


def _nothing_usable(refused: list[tuple[IPAddress, str]], empty: list[str]) -> str:
    if refused:
        said = ", ".join(f"{a} ({why})" for a, why in refused)
        return f"no usable address: refused {said}"
    return f"no {' or '.join(empty)} record"


def _short(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text[:200]
