"""The names of a configuration, where the router starts: `init` resolves them once, or fails;
`legacy` hands them to a `Follower`."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..errors import EgressRouterError
from ..log import Log
from ..model import IPAddress, Name, RouterConfig
from ..reconcile import Router
from . import Answer, Answers
from .follow import Follower
from .resolve import DnsError, Lookup, Resolver, own_addresses

ConfigSource = Callable[[], RouterConfig]


class NamesDidNotResolve(EgressRouterError):
    """`init` mode: a name did not resolve; nothing was applied (exit 1)."""

    def __init__(self, errors: list[DnsError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors

    def lines(self) -> list[str]:
        return [f"{e} (nothing was applied)" for e in self.errors]


def resolve_once(router: Router, config: RouterConfig, log: Log) -> None:
    """Resolve every name of `config` once into `router.answers`; raise `NamesDidNotResolve`
    naming each one that did not, before anything is applied."""
    router.plan(config)  # reads the pod: its own addresses are never a destination
    own = _own(router, config)
    resolver = Resolver(router.resolv_conf)
    answers = []
    errors = []
    for name in config.destinations.names:
        try:
            found = resolver.lookup(name, config.families, own)
        except DnsError as error:
            errors.append(error)
            continue
        for address, why in found.refused:
            log.warning("refused an address of a destination name, never used", name=str(name), address=str(address), reason=why)
        log.info("destination name resolved", name=str(name), addresses=",".join(map(str, found.addresses)))
        answers.append((name, Answer(found.addresses, time.time())))
    if errors:
        raise NamesDidNotResolve(errors)
    router.answers = tuple(sorted(answers))


def resolve_now(config: RouterConfig, resolv_conf: str = "/etc/resolv.conf") -> tuple[Answers, list[str]]:
    """`egress-router plan`: every name looked up now, and a line each saying what it gave."""
    resolver = Resolver(resolv_conf)
    answers, said = [], []
    for name in config.destinations.names:
        try:
            found = resolver.lookup(name, config.families, own_addresses(config.sources, ()))
        except DnsError as error:
            said.append(f"name {name} does not resolve now: {error.answer} (its ports would be refused until it does)")
            continue
        refused = "".join(f"; refused {a} ({why})" for a, why in found.refused)
        said.append(f"name {name} resolves now to {', '.join(map(str, found.addresses))} (TTL {found.ttl} s){refused}")
        answers.append((name, Answer(found.addresses, time.time())))
    return tuple(sorted(answers)), said


def follower(router: Router, config_of: ConfigSource, log: Log) -> Follower:
    """A follower of the names of the configuration in force (`config_of()`), started."""
    resolver = Resolver(router.resolv_conf)

    def lookup(name: Name) -> Lookup:
        config = config_of()
        return resolver.lookup(name, config.families, _own(router, config))

    config = config_of()
    names = Follower(config.destinations.names, lookup, log, config.dns_min_ttl, config.dns_max_ttl)
    names.start()
    return names


def _own(router: Router, config: RouterConfig) -> tuple[IPAddress, ...]:
    """The router's own addresses as far as `router` read the pod (none before it did)."""
    return own_addresses(config.sources, router.facts.pod_addresses if router.facts is not None else ())
