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
import os
import stat
from collections.abc import Iterator, Mapping
from functools import lru_cache
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
    Name,
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
DNS_MIN_TTL = "EGRESS_ROUTER_DNS_MIN_TTL"
DNS_MAX_TTL = "EGRESS_ROUTER_DNS_MAX_TTL"
MAX_DNS_TTL = 86400.0  # a day: longer than any sensible cap


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


MAX_NAME = 253  # characters of a host name, without its trailing dot
_LABEL_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_ADDRESS_CHARACTERS = frozenset("0123456789.")


def parse_destination(text: str) -> IPAddress | Name:
    """A destination field: an address, or a DNS name. Anything that looks like an address
    (digits and dots only, or a ':') is one, and its mistakes are an address's."""
    try:
        return parse_address(text)
    except _Invalid as error:
        return _as_name(text, error)


def _as_name(text: str, error: _Invalid) -> Name:
    """`text`, which `parse_address` refused with `error`: a name, or that error when `text`
    looks like an address."""
    if ":" in text or _ADDRESS_CHARACTERS.issuperset(text):
        raise error
    return parse_name(text)


@lru_cache(maxsize=4096)
def parse_name(text: str) -> Name:
    """An RFC 1123 host name of at most 253 characters, a trailing dot allowed; lower-cased."""
    name = text[:-1] if text.endswith(".") else text
    problem = _name_problem(name.lower())
    if problem is not None:
        raise _Invalid(f"{text!r} is neither a valid IP address nor a valid host name: {problem}")
    return Name(name.lower())


def _name_problem(name: str) -> str | None:
    if len(name) > MAX_NAME:
        return f"{len(name)} characters, at most {MAX_NAME}"
    labels = name.split(".")
    if len(labels) < 2:
        return "a single label; names are absolute (no search domain is added), write the full name"
    for label in labels:
        if not label:
            return "an empty label (two dots, or a leading dot)"
        if len(label) > 63:
            return f"label {label[:20]!r}... is {len(label)} characters, at most 63"
        if not _LABEL_CHARACTERS.issuperset(label):
            return f"label {label!r} holds a character other than letters, digits and '-'"
        if label[0] == "-" or label[-1] == "-":
            return f"label {label!r} starts or ends with '-'"
    if labels[-1].isdigit():
        return f"the last label {labels[-1]!r} is all digits"
    return None


# Problems kept per load, in line order; the rest are only counted. A 1 MB file of mistakes has
# tens of thousands: enough to fix the first ones, bounded in memory and in log lines.
MAX_PROBLEMS = 20
# Past this many problems the rest of the text is not checked: a 16 MiB file of junk would
# otherwise keep the daemon's loop (and SIGTERM) waiting for half a minute of explanations.
STOP_AFTER_PROBLEMS = 100_000


class Problems:
    """The problems of one load: the first `limit` kept, the rest counted."""

    def __init__(self, limit: int = MAX_PROBLEMS) -> None:
        self.kept: list[Problem] = []
        self.more = 0
        self.limit = limit
        self.note: str | None = None  # where checking stopped, if it did

    def add(self, problem: Problem) -> None:
        if len(self.kept) < self.limit:
            self.kept.append(problem)
        else:
            self.more += 1

    @property
    def count(self) -> int:
        return len(self.kept) + self.more

    def absorb(self, error: ConfigError) -> None:
        for problem in error.problems:
            self.add(problem)
        self.more += error.more
        self.note = self.note or error.note

    def __bool__(self) -> bool:
        return bool(self.kept)

    def error(self) -> ConfigError:
        return ConfigError(self.kept, self.more, self.note)


def parse_destinations(
    text: str, variable: str = DESTINATION, max_problems: int = MAX_PROBLEMS
) -> Destinations:
    """Parse the rules of `EGRESS_DESTINATION` (or of the file it names).

    Raises `ConfigError` with the first `max_problems` bad lines (and a count of the rest), or
    returns the rules in input order.
    """
    problems = Problems(max_problems)
    mappings: list[Rule] = []
    fallbacks: list[IPAddress | Name] = []
    fallback_lines: dict[int, int] = {}  # family -> line of its fallback
    # A local port is used once per protocol and family (an address's type is its family).
    seen: dict[tuple[int, str, type], int] = {}
    misplaced = False
    for number, raw in enumerate(_lines(text), start=1):
        fields = raw.split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            rule = parse_rule(fields, number)
        except _Invalid as error:
            problems.add(Problem(variable, str(error), number, raw))
            if problems.count >= STOP_AFTER_PROBLEMS:
                _stop(problems, variable, number)
                break
            continue
        if not isinstance(rule, Rule):  # a lone address or name: a fallback
            # A name is the fallback of both families.
            versions = (4, 6) if rule.version == 0 else (rule.version,)
            clash = [(v, f) for v in versions if (f := fallback_lines.setdefault(v, number)) != number]
            if not clash:
                fallbacks.append(rule)
            else:
                which = "" if rule.version == 0 else f"IPv{rule.version} "
                message = f"a second {which}fallback (the first is on line {clash[0][1]})"
                problems.add(Problem(variable, message, number, raw))
            continue
        if fallback_lines and not misplaced:
            misplaced = True  # said once, at the first rule after it, not at every one
            first = min(fallback_lines.values())
            problems.add(Problem(variable, f"the fallback on line {first} must be the last rule", number, raw))
        kind = type(rule.address)
        if kind is Name:  # a name takes the port in both families
            four = seen.setdefault((rule.port, rule.protocol, IPv4Address), number)
            six = seen.setdefault((rule.port, rule.protocol, IPv6Address), number)
            first = four if four != number else six
        else:
            first = seen.setdefault((rule.port, rule.protocol, kind), number)
        if first != number:
            message = f"local port {rule.port}/{rule.protocol} is already used on line {first}"
            problems.add(Problem(variable, message, number, raw))
            if problems.count >= STOP_AFTER_PROBLEMS:
                _stop(problems, variable, number)
                break
            continue
        mappings.append(rule)
    if problems:
        raise problems.error()
    return Destinations(tuple(mappings), tuple(fallbacks))


def _stop(problems: Problems, variable: str, line: int) -> None:
    # The count of the rest is a lower bound from here on: say so.
    problems.note = f"{variable}: checking stopped at line {line}, after {problems.count:,} problems"


def parse_rule(fields: list[str], line: int = 0) -> Rule | IPAddress | Name:
    """The fields of one line -> its rule, or the fallback address of a lone `<ip>`.

    The one validation of a rule: it raises `_Invalid` saying what is wrong, and is also the
    hot loop of a large rule set, so the checks of a well-formed rule come first and the
    questions only a mistake raises (a stray comment) come after a failure."""
    count = len(fields)
    try:
        if count == 1:
            return parse_destination(fields[0])
        if count == 2:
            raise _Invalid("expected '<port> <protocol> <ip> [<remote_port>]' or a lone fallback <ip>")
        if count > 4:
            raise _Invalid(f"expected '<port> <protocol> <ip> [<remote_port>]', got {count} fields")
        port = parse_port(fields[0])
        protocol = parse_protocol(fields[1])
        try:
            address: IPAddress | Name = parse_address(fields[2])
        except _Invalid as error:  # not an address: a name, or the address's mistake
            address = _as_name(fields[2], error)
        remote = port if count == 3 else parse_port(fields[3], "remote port")
    except _Invalid:
        if any(field.startswith("#") for field in fields[1:]):
            raise _Invalid("a comment must be on a line of its own") from None
        raise
    return Rule(port, protocol, address, remote, line)


# Lower case -> the one string object of each protocol name, which every rule then shares.
_PROTOCOL_NAMES = {name: name for name in PROTOCOLS}


def parse_protocol(text: str) -> str:
    name = _PROTOCOL_NAMES.get(text) or _PROTOCOL_NAMES.get(text.lower())
    if name is None:
        raise _Invalid(f"protocol {text!r} is not one of {', '.join(PROTOCOLS)}")
    return name


LINES_AT_ONCE = 1 << 20  # characters of text split into lines at a time


def _lines(text: str) -> Iterator[str]:
    """The lines of `text`, split a megabyte at a time: a 16 MiB file of short lines is never
    a list of millions of strings at once."""
    # A byte-order mark is what some Windows editors put first; it is not part of line 1.
    text = text.removeprefix("\ufeff")
    start = 0
    while (end := text.find("\n", start + LINES_AT_ONCE)) >= 0:
        yield from text[start:end].split("\n")
        start = end + 1
    yield from text[start:].split("\n")


def _line_texts(text: str, numbers: set[int]) -> dict[int, str]:
    """The text of the lines numbered `numbers` (from 1), in one pass."""
    found: dict[int, str] = {}
    last = max(numbers, default=0)
    for number, raw in enumerate(_lines(text), start=1):
        if number in numbers:
            found[number] = raw
        if number >= last:
            break
    return found


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
    problems = Problems()

    def field(name: str, parse, default):  # type: ignore[no-untyped-def]
        text = environ.get(name)
        if text is None or (default is not None and text.strip() == ""):
            return default
        try:
            return parse(text.strip())
        except _Invalid as error:
            problems.add(Problem(name, str(error)))
            return None

    mode = field(MODE, parse_mode, Mode.LEGACY)
    sources = field(SOURCE, parse_sources, None)
    gateways = field(GATEWAY, parse_gateways, None)
    egress_if = field(EGRESS_INTERFACE, parse_interface_name, DEFAULT_EGRESS_INTERFACE)
    pod_if = field(POD_INTERFACE, parse_interface_name, DEFAULT_POD_INTERFACE)
    http_port = field(HTTP_PORT, _parse_http_port, DEFAULT_HTTP_PORT)
    expected = field(EXPECTED_CONNECTIONS, _parse_count, DEFAULT_EXPECTED_CONNECTIONS)
    log_format = field(LOG_FORMAT, _parse_log_format, "text")
    min_ttl = field(DNS_MIN_TTL, _parse_seconds, 5.0)
    max_ttl = field(DNS_MAX_TTL, _parse_seconds, 1800.0)
    if min_ttl is not None and max_ttl is not None and min_ttl > max_ttl:
        problems.add(Problem(DNS_MIN_TTL, f"{min_ttl:g} s is above {DNS_MAX_TTL} ({max_ttl:g} s)"))
    for name in (SOURCE, GATEWAY):
        if environ.get(name) is None:
            problems.add(Problem(name, "is not set"))
    if egress_if is not None and egress_if == pod_if:
        problems.add(Problem(EGRESS_INTERFACE, f"is the same as {POD_INTERFACE} ({pod_if})"))
    if sources and gateways:
        for problem in _check_pairs(sources, gateways):
            problems.add(problem)

    destinations = Destinations()
    destination_file = environ.get(DESTINATION_FILE) or None
    if mode is None or mode.redirects:
        variable = _destination_variable(destination_file)
        try:
            text = _destination_text(environ, destination_file)
            destinations = parse_destinations(text, variable)
        except ConfigError as error:
            problems.absorb(error)
        else:
            _check_rules(problems, destinations, variable, text, sources, mode, http_port)
    if problems:
        raise problems.error()
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
        dns_min_ttl=min_ttl,
        dns_max_ttl=max_ttl,
    )


def _parse_http_port(text: str) -> int:
    return 0 if text == "0" else parse_port(text, "HTTP port")


def _parse_log_format(text: str) -> str:
    if text not in LOG_FORMATS:
        raise _Invalid(f"{text!r} is not one of {', '.join(LOG_FORMATS)}")
    return text


def _parse_seconds(text: str) -> float:
    whole, dot, part = text.partition(".")
    if not (whole.isascii() and whole.isdigit()) or (dot and not (part.isascii() and part.isdigit())):
        raise _Invalid(f"{text!r} is not a number of seconds")
    value = float(text)
    if not 1.0 <= value <= MAX_DNS_TTL:
        raise _Invalid(f"{text} s is out of range 1-{MAX_DNS_TTL:g}")
    return value


def _parse_count(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise _Invalid(f"{text!r} is not a whole number")
    return int(text)


def _destination_variable(path: str | None) -> str:
    return DESTINATION if path is None else f"{DESTINATION_FILE} ({path})"


# A ConfigMap holds at most 1 MiB; the largest useful file (every port of every protocol in both
# families) is about 10 MB. Anything bigger is a mistake, refused before it is read: a pod with
# a memory limit must not die of it.
MAX_FILE_BYTES = 16 * 1024 * 1024


def read_destination_file(path: str, limit: int = MAX_FILE_BYTES) -> str:
    """The text of a destination file of at most `limit` bytes. Anything else (missing,
    unreadable, a directory or a pipe, too big, not UTF-8) is one `ConfigError` line. A symlink
    that resolves is read through (a mounted ConfigMap's key is one)."""
    try:
        # Non-blocking: a named pipe in its place must not hang the router in open or read.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise _file_error(f"cannot read {path}: {error.strerror or error}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _file_error(f"cannot read {path}: {_file_kind(info.st_mode)}, not a file")
        if info.st_size > limit:
            raise _file_error(_too_big(path, info.st_size, limit))
        data = _read_at_most(fd, limit + 1)
    except OSError as error:
        raise _file_error(f"cannot read {path}: {error.strerror or error}") from None
    finally:
        os.close(fd)
    if len(data) > limit:  # it grew after the fstat
        raise _file_error(_too_big(path, len(data), limit))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _file_error(f"{path} is not UTF-8 text") from None


def _read_at_most(fd: int, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _file_error(message: str) -> ConfigError:
    return ConfigError([Problem(DESTINATION_FILE, message)])


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "it is a directory"
    if stat.S_ISFIFO(mode):
        return "it is a named pipe"
    if stat.S_ISSOCK(mode):
        return "it is a socket"
    return "it is a device"


def _too_big(path: str, size: int, limit: int) -> str:
    return (
        f"{path} is {size / 2**20:.1f} MiB, over the {limit / 2**20:g} MiB limit of a destination "
        "file (not read)"
    )


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
    found: Problems,
    destinations: Destinations,
    variable: str,
    text: str,
    sources: tuple[IPInterface, ...] | None,
    mode: Mode | None,
    http_port: int | None,
) -> None:
    """Checks that need more than the rules themselves: the source families, the HTTP port."""
    if not destinations.mappings and not destinations.fallbacks:
        found.add(Problem(variable, "holds no rule (at least one rule or a fallback address)"))
        return
    families = {s.version for s in sources or ()}
    wanted = None
    if sources and families != {4, 6}:
        wanted = IPv4Address if 4 in families else IPv6Address
    own_port = http_port if mode is Mode.LEGACY else 0
    wrong: list[tuple[int, str]] = []  # (line, message) of the problems there is room for

    def add(rule: Rule, message: str) -> None:
        if len(found.kept) + len(wrong) < found.limit:
            wrong.append((rule.line, message))
        else:
            found.more += 1

    # The loop runs over every rule, so it tests the cheap things first.
    if wanted is not None or own_port:
        for rule in destinations.mappings:
            kind = type(rule.address)
            if wanted is not None and kind is not wanted and kind is not Name:
                add(rule, _family_message(rule.address))
            if rule.port == own_port and rule.protocol == "tcp":
                add(
                    rule,
                    f"local port {own_port}/tcp is the router's own health and metrics port "
                    f"({HTTP_PORT}): map another port, or set {HTTP_PORT} to another port or 0",
                )
    texts = _line_texts(text, {line for line, _ in wrong})
    for line, message in wrong:
        found.add(Problem(variable, message, line, texts[line]))
    for address in destinations.fallbacks:
        if sources and address.version and address.version not in families:
            found.add(Problem(variable, "fallback " + _family_message(address)))


def _family_message(address: IPAddress | Name) -> str:
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
