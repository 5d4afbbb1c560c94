"""The validated configuration: immutable values that the rest of the router trusts.

Nothing here parses text or touches the system; `egress_router.config` builds these objects from
the environment and guarantees their invariants (a port in 1-65535, one rule per local port and
protocol and family, a destination address of the same family as a source, ...).
"""

from __future__ import annotations

from enum import Enum
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface
from typing import NamedTuple

IPAddress = IPv4Address | IPv6Address
IPInterface = IPv4Interface | IPv6Interface

DEFAULT_EGRESS_INTERFACE = "macvlan0"
DEFAULT_POD_INTERFACE = "eth0"
DEFAULT_HTTP_PORT = 9090
# Warn when the kernel tracks fewer connections at once: the default of a small node's kernel
# is 65536 or more, and a full conntrack table drops new connections.
DEFAULT_EXPECTED_CONNECTIONS = 16384


class Mode(Enum):
    """`EGRESS_ROUTER_MODE`, as the OpenShift image understands it."""

    INIT = "init"
    LEGACY = "legacy"
    UNIT_TEST = "unit-test"
    HTTP_PROXY = "http-proxy"
    DNS_PROXY = "dns-proxy"

    @property
    def redirects(self) -> bool:
        """The proxy modes only set up the network: the image's proxies do the rest."""
        return self not in (Mode.HTTP_PROXY, Mode.DNS_PROXY)


def _of_family(items: tuple[IPAddress, ...], family: int) -> IPAddress | None:
    """The one address of `family` among `items` (config allows at most one per family)."""
    for item in items:
        if item.version == family:
            return item
    return None


class Rule(NamedTuple):
    """`<port> <protocol> <ip> [<remote_port>]`: connections to `port` go to `address:remote_port`.

    A named tuple rather than a frozen dataclass: rule sets run to tens of thousands of lines
    and a tuple is built several times faster."""

    port: int
    protocol: str
    address: IPAddress
    remote_port: int
    line: int = 0

    @property
    def family(self) -> int:
        return self.address.version


class Destinations(NamedTuple):
    """All redirection rules, in input order, and at most one fallback per address family."""

    mappings: tuple[Rule, ...] = ()
    fallbacks: tuple[IPAddress, ...] = ()

    def fallback(self, family: int) -> IPAddress | None:
        return _of_family(self.fallbacks, family)


class RouterConfig(NamedTuple):
    """Everything the environment says, validated."""

    mode: Mode
    sources: tuple[IPInterface, ...]
    gateways: tuple[IPAddress, ...]
    destinations: Destinations = Destinations()
    egress_interface: str = DEFAULT_EGRESS_INTERFACE
    pod_interface: str = DEFAULT_POD_INTERFACE
    http_port: int = DEFAULT_HTTP_PORT
    debug: bool = False
    destination_file: str | None = None
    expected_connections: int = DEFAULT_EXPECTED_CONNECTIONS
    log_format: str = "text"  # or "json"

    @property
    def families(self) -> tuple[int, ...]:
        return tuple(s.version for s in self.sources)

    def gateway(self, family: int) -> IPAddress | None:
        return _of_family(self.gateways, family)

    @property
    def counts_traffic(self) -> bool:
        """Only `legacy` mode reads the per-port connection and byte counts (its metrics and
        `status`): an `init` container has exited before anyone could, so its table does not
        pay for counting on every forwarded packet."""
        return self.mode is Mode.LEGACY

    @property
    def served_http_port(self) -> int:
        """The port the router itself answers on (0: none), which is never redirected."""
        return self.http_port if self.mode is Mode.LEGACY else 0
