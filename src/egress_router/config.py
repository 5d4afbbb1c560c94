"""Environment and destination text -> validated `RouterConfig`. Pure: no I/O but reading the
destination file that the environment names.

Liberal where a user would expect it (any whitespace between fields, CRLF line ends, `TCP` or
`tcp`, blank lines and whole-line `#` comments) and strict where a mistake would do harm: every
address, port and prefix is checked, the fallback must come last, and a local port is used once
per protocol and address family. Every problem is collected before `ConfigError` is raised, so a
user sees them all at once.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from functools import lru_cache, partial
from ipaddress import IPv4Address, IPv6Address

from .errors import ConfigError, Problem
from .ifname import interface_name_problem
from .model import (
    DEFAULT_EGRESS_INTERFACE,
    DEFAULT_EXPECTED_CONNECTIONS,
    DEFAULT_HTTP_PORT,
    DEFAULT_POD_INTERFACE,
    Destinations,
    IPAddress,
    IPInterface,
    Mode,
    RouterConfig,
    Rule,
)
from .schema import PROTOCOLS

# The variables of the OpenShift image, kept as they are, and the ones this project adds.
SOURCE = "EGRESS_SOURCE"
GATEWAY = "EGRESS_GATEWAY"
DESTINATION = "EGRESS_DESTINATION"
DESTINATION_FILE = "EGRESS_DESTINATION_FILE"
MODE = "EGRESS_ROUTER_MODE"
DEBUG = "EGRESS_ROUTER_DEBUG"
EGRESS_INTERFACE = "EGRESS_INTERFACE"
POD_INTERFACE = "EGRESS_POD_INTERFACE"
HTTP_PORT = "EGRESS_ROUTER_HTTP_PORT"
LOG_FORMAT = "EGRESS_ROUTER_LOG_FORMAT"
LOG_FORMATS = ("text", "json")
EXPECTED_CONNECTIONS = "EGRESS_ROUTER_EXPECTED_CONNECTIONS"


class _Invalid(ValueError):
    """A field is wrong; the message says why in words a user understands."""


def parse_port(text: str, what: str = "port") -> int:
    if not text.isascii() or not text.isdigit():
        raise _Invalid(f"{what} {text!r} is not a number")
    value = int(text)
    if not 1 <= value <= 65535:
        raise _Invalid(f"{what} {text} is out of range 1-65535")
    return value


@lru_cache(maxsize=65536)
def parse_address(text: str, on_link: bool = False) -> IPAddress:
    """A unicast address a packet can be routed to; rules share few addresses, hence the cache.
    `on_link` admits link-local addresses: a gateway is reached on the egress interface itself,
    and IPv6 gateways are most often link-local (fe80::1)."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise _Invalid(f"{text!r} is not a valid IP address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise _Invalid(f"{text!r}: a zone index (%...) is not allowed")
    if address.is_unspecified or address.is_loopback or address.is_multicast:
        raise _Invalid(f"{text} is not a unicast address that can be routed to")
    if address.is_link_local and not on_link:
        raise _Invalid(f"{text} is link-local and cannot be reached through the gateway")
    if isinstance(address, ipaddress.IPv4Address) and address == ipaddress.IPv4Address(
        "255.255.255.255"
    ):
        raise _Invalid(f"{text} is the broadcast address")
    return address


def parse_destinations(text: str, variable: str = DESTINATION) -> Destinations:
    """Parse the rules of `EGRESS_DESTINATION` (or of the file it names).

    Raises `ConfigError` listing every bad line, or returns the rules in input order.
    """
    problems: list[Problem] = []
    mappings: list[Rule] = []
    fallbacks: list[tuple[int, IPAddress]] = []
    # A local port is used once per protocol and family: `port | protocol | family` as one int,
    # which hashes faster than a tuple of the three.
    seen: dict[int, int] = {}
    addresses: dict[str, tuple[IPAddress, int]] = {}  # rules share few addresses
    misplaced = False
    lines = _lines(text)
    for number, raw in enumerate(lines, start=1):
        fields = raw.split()
        # The hot loop of a large rule set: a well-formed rule is taken here, without a
        # function call; anything else goes to `_parse_mapping`, which says what is wrong.
        count = len(fields)
        if count == 4:
            port, protocol, address, remote = fields
        elif count == 3:
            port, protocol, address = fields
            remote = port
        else:
            port = remote = protocol = address = ""
        known = addresses.get(address)
        name_bits = _PROTOCOL_BITS.get(protocol)
        mapping = None
        if (
            known is not None
            and name_bits is not None
            and port.isdigit()
            and remote.isdigit()
            and port.isascii()
            and remote.isascii()
        ):
            local, target = int(port), int(remote)
            if 0 < local < 65536 and 0 < target < 65536:
                mapping = _new_mapping((local, name_bits[0], known[0], target, number))
                key = local | name_bits[1] | known[1]
        if mapping is None:
            if not fields or fields[0].startswith("#"):
                continue
            try:
                if count == 1:
                    fallbacks.append((number, parse_address(fields[0])))
                    continue
                mapping = _parse_mapping(fields, number)
            except _Invalid as error:
                problems.append(Problem(variable, str(error), number, raw))
                continue
            version = mapping.address.version
            addresses[address] = (mapping.address, version << 18)
            key = mapping.port | _PROTOCOL_BITS[mapping.protocol][1] | version << 18
        if fallbacks and not misplaced:
            misplaced = True  # said once, at the first rule after it, not at every one
            first = fallbacks[0][0]
            problems.append(
                Problem(variable, f"the fallback on line {first} must be the last rule", number, raw)
            )
        if key in seen:
            problems.append(
                Problem(
                    variable,
                    f"local port {mapping.port}/{mapping.protocol} is already used on line "
                    f"{seen[key]}",
                    number,
                    raw,
                )
            )
            continue
        seen[key] = number
        mappings.append(mapping)
    problems.extend(_check_fallbacks(fallbacks, lines, variable))
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: p.line or 0))
    return Destinations(tuple(mappings), tuple(address for _, address in fallbacks))


# The protocols as the fast path accepts them (lower case; others go the slow way), with the
# bits that tell them apart in a duplicate-port key (ports take 16 bits, the family bit 18+).
_PROTOCOL_BITS = {name: (name, index << 16) for index, name in enumerate(PROTOCOLS)}
# A named tuple's own constructor is Python code; building the tuple directly is several times
# faster, and the fast path has already checked every field.
_new_mapping = partial(tuple.__new__, Rule)


def _lines(text: str) -> list[str]:
    # A byte-order mark is what some Windows editors put first; it is not part of line 1.
    return text.removeprefix("\ufeff").split("\n")


def _parse_mapping(fields: list[str], number: int) -> Rule:
    # The hot loop of a large rule set: checks are inlined, the common case first.
    count = len(fields)
    if count == 3 or count == 4:
        port, protocol, address, *rest = fields
        if port.isdigit() and port.isascii() and 0 < int(port) < 65536:
            remote = rest[0] if rest else port
            if remote.isdigit() and remote.isascii() and 0 < int(remote) < 65536:
                protocol = protocol.lower()
                if protocol in PROTOCOLS:
                    return Rule(int(port), protocol, parse_address(address), int(remote), number)
    # Not a valid rule: find out what exactly is wrong, to say so.
    if any(f.startswith("#") for f in fields[1:]):
        raise _Invalid("a comment must be on a line of its own")
    if count > 4:
        raise _Invalid(f"expected '<port> <protocol> <ip> [<remote_port>]', got {count} fields")
    if count == 2:
        raise _Invalid("expected '<port> <protocol> <ip> [<remote_port>]' or a lone fallback <ip>")
    parse_port(fields[0])
    if fields[1].lower() not in PROTOCOLS:
        raise _Invalid(f"protocol {fields[1]!r} is not one of {', '.join(PROTOCOLS)}")
    parse_address(fields[2])
    parse_port(fields[3], "remote port")
    raise AssertionError(f"unreachable: {fields}")  # pragma: no cover


def _check_fallbacks(
    fallbacks: list[tuple[int, IPAddress]], lines: list[str], variable: str
) -> list[Problem]:
    problems = []
    families: dict[int, int] = {}
    for number, address in fallbacks:
        if address.version in families:
            problems.append(
                Problem(
                    variable,
                    f"a second IPv{address.version} fallback (the first is on line "
                    f"{families[address.version]})",
                    number,
                    lines[number - 1],
                )
            )
        families.setdefault(address.version, number)
    return problems


def parse_sources(text: str) -> tuple[IPInterface, ...]:
    """`EGRESS_SOURCE`: an address with an optional prefix length, or one per family."""
    sources: list[IPInterface] = []
    for item in _split_list(text):
        address, slash, prefix = item.partition("/")
        host = parse_address(address)
        limit = host.max_prefixlen
        if slash:
            if not prefix.isascii() or not prefix.isdigit() or int(prefix) > limit:
                raise _Invalid(f"prefix length {prefix!r} of {item!r} is not in 0-{limit}")
            interface = ipaddress.ip_interface(f"{host}/{int(prefix)}")
            net = interface.network
            if net.prefixlen < limit - 1 and host in (net.network_address, net.broadcast_address):
                raise _Invalid(f"{item} is not a host address of {net}")
        else:
            interface = ipaddress.ip_interface(f"{host}/{limit}")
        sources.append(interface)
    _one_per_family([s.ip for s in sources], "source")
    return tuple(sources)


def parse_gateways(text: str) -> tuple[IPAddress, ...]:
    gateways = tuple(parse_address(item, on_link=True) for item in _split_list(text))
    _one_per_family(list(gateways), "gateway")
    return gateways


def _split_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        raise _Invalid("is empty")
    if not all(items) or len(items) > 2:
        raise _Invalid(f"{text.strip()!r} is not one address, or one IPv4 and one IPv6 address")
    return items


def _one_per_family(addresses: list[IPAddress], what: str) -> None:
    if len({a.version for a in addresses}) != len(addresses):
        raise _Invalid(f"give at most one IPv4 and one IPv6 {what}")


def parse_interface_name(text: str) -> str:
    problem = interface_name_problem(text)
    if problem is not None:
        raise _Invalid(problem)
    return text


def parse_mode(text: str) -> Mode:
    value = text.strip() or Mode.LEGACY.value
    try:
        return Mode(value)
    except ValueError:
        valid = ", ".join(m.value for m in Mode)
        raise _Invalid(f"unknown mode {value!r} (valid: {valid})") from None


def load_environment(environ: Mapping[str, str]) -> RouterConfig:
    """Build the router's configuration from its environment; raise `ConfigError` on any problem."""
    problems: list[Problem] = []

    def field(name: str, parse, default):  # type: ignore[no-untyped-def]
        text = environ.get(name)
        if text is None or (default is not None and text.strip() == ""):
            return default
        try:
            return parse(text.strip())
        except _Invalid as error:
            problems.append(Problem(name, str(error)))
            return None

    mode = field(MODE, parse_mode, Mode.LEGACY)
    sources = field(SOURCE, parse_sources, None)
    gateways = field(GATEWAY, parse_gateways, None)
    egress_if = field(EGRESS_INTERFACE, parse_interface_name, DEFAULT_EGRESS_INTERFACE)
    pod_if = field(POD_INTERFACE, parse_interface_name, DEFAULT_POD_INTERFACE)
    http_port = field(HTTP_PORT, _parse_http_port, DEFAULT_HTTP_PORT)
    expected = field(EXPECTED_CONNECTIONS, _parse_count, DEFAULT_EXPECTED_CONNECTIONS)
    log_format = field(LOG_FORMAT, _parse_log_format, "text")
    for name in (SOURCE, GATEWAY):
        if environ.get(name) is None:
            problems.append(Problem(name, "is not set"))
    if egress_if is not None and egress_if == pod_if:
        problems.append(Problem(EGRESS_INTERFACE, f"is the same as {POD_INTERFACE} ({pod_if})"))
    if sources and gateways:
        problems.extend(_check_pairs(sources, gateways))

    destinations = Destinations()
    destination_file = environ.get(DESTINATION_FILE) or None
    if mode is None or mode.redirects:
        variable = _destination_variable(destination_file)
        try:
            text = _destination_text(environ, destination_file)
            destinations = parse_destinations(text, variable)
        except ConfigError as error:
            problems.extend(error.problems)
        else:
            problems.extend(
                _check_rules(destinations, variable, _lines(text), sources, mode, http_port)
            )
    if problems:
        raise ConfigError(problems)
    return RouterConfig(
        mode=mode,
        sources=sources,
        gateways=gateways,
        destinations=destinations,
        egress_interface=egress_if,
        pod_interface=pod_if,
        http_port=http_port,
        debug=bool(environ.get(DEBUG)),
        destination_file=destination_file,
        expected_connections=expected,
        log_format=log_format,
    )


def _parse_http_port(text: str) -> int:
    return 0 if text == "0" else parse_port(text, "HTTP port")


def _parse_log_format(text: str) -> str:
    if text not in LOG_FORMATS:
        raise _Invalid(f"{text!r} is not one of {', '.join(LOG_FORMATS)}")
    return text


def _parse_count(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise _Invalid(f"{text!r} is not a whole number")
    return int(text)


def _destination_variable(path: str | None) -> str:
    return DESTINATION if path is None else f"{DESTINATION_FILE} ({path})"


def read_destination_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except UnicodeDecodeError:
        raise ConfigError([Problem(DESTINATION_FILE, f"{path} is not UTF-8 text")]) from None
    except OSError as error:
        raise ConfigError(
            [Problem(DESTINATION_FILE, f"cannot read {path}: {error.strerror or error}")]
        ) from None


def _destination_text(environ: Mapping[str, str], path: str | None) -> str:
    inline = environ.get(DESTINATION)
    if path is not None and inline is not None and inline.strip():
        raise ConfigError(
            [Problem(DESTINATION_FILE, f"set either {DESTINATION} or {DESTINATION_FILE}, not both")]
        )
    if path is not None:
        return read_destination_file(path)
    if inline is None:
        raise ConfigError([Problem(DESTINATION, f"is not set (nor is {DESTINATION_FILE})")])
    return inline


def _check_pairs(sources: tuple[IPInterface, ...], gateways: tuple[IPAddress, ...]) -> list[Problem]:
    problems = []
    source_families = {s.version for s in sources}
    gateway_families = {g.version for g in gateways}
    for family in sorted(source_families ^ gateway_families):
        has = SOURCE if family in source_families else GATEWAY
        lacks = GATEWAY if has == SOURCE else SOURCE
        problems.append(Problem(lacks, f"has no IPv{family} address to pair with the one in {has}"))
    for source in sources:
        if source.ip in gateways:
            problems.append(Problem(GATEWAY, f"{source.ip} is also the source address"))
    return problems


def _check_rules(
    destinations: Destinations,
    variable: str,
    lines: list[str],
    sources: tuple[IPInterface, ...] | None,
    mode: Mode | None,
    http_port: int | None,
) -> list[Problem]:
    """Checks that need more than the rules themselves: the source families, the HTTP port."""
    if not destinations.mappings and not destinations.fallbacks:
        return [Problem(variable, "holds no rule (at least one rule or a fallback address)")]
    problems = []
    families = {s.version for s in sources or ()}
    # Both loops run over every rule, so each tests one cheap thing first.
    if sources and families != {4, 6}:
        wanted = IPv4Address if 4 in families else IPv6Address
        for mapping in destinations.mappings:
            if type(mapping.address) is not wanted:
                problems.append(
                    Problem(variable, _family_message(mapping.address), mapping.line, lines[mapping.line - 1])
                )
    if mode is Mode.LEGACY and http_port:
        for mapping in destinations.mappings:
            if mapping.port == http_port and mapping.protocol == "tcp":
                problems.append(
                    Problem(
                        variable,
                        f"local port {http_port}/tcp is the router's own health and metrics port "
                        f"({HTTP_PORT}): map another port, or set {HTTP_PORT} to another port or 0",
                        mapping.line,
                        lines[mapping.line - 1],
                    )
                )
    for address in destinations.fallbacks:
        if sources and address.version not in families:
            problems.append(Problem(variable, "fallback " + _family_message(address)))
    return sorted(problems, key=lambda p: p.line or 0)


def _family_message(address: IPAddress) -> str:
    return f"{address} is IPv{address.version} but {SOURCE} has no IPv{address.version} address"


def format_destinations(destinations: Destinations) -> str:
    """The rules as `EGRESS_DESTINATION` text; `parse_destinations` reads it back unchanged."""
    lines = [
        f"{m.port} {m.protocol} {m.address}"
        + ("" if m.remote_port == m.port else f" {m.remote_port}")
        for m in destinations.mappings
    ]
    lines += [str(address) for address in destinations.fallbacks]
    return "".join(f"{line}\n" for line in lines)
