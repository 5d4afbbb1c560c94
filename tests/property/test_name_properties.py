"""Names in destination lines, for any input: a valid host name parses to itself (lower case,
no trailing dot) and renders back; digits and dots are always an address, never a lookup;
whatever the answers, a plan with names is accepted by nft, and a new answer is only chain
rewrites of the same structure."""

from __future__ import annotations

import ipaddress
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egress_router.config import format_destinations, load_environment, parse_destinations
from egress_router.dns import Answer
from egress_router.errors import ConfigError
from egress_router.model import Name
from egress_router.nft import Transaction
from egress_router.nft.table import SetChain, diff
from egress_router.plan import DEFAULT_FACTS, build_table

inner = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCXYZ0123456789-", min_size=0, max_size=20)
edge = st.sampled_from("abcxyzABZ0189")
label = st.builds(lambda a, mid, b: a + mid + b, edge, inner, edge) | edge
tld = st.text(alphabet="abcxyz", min_size=2, max_size=6)
hostnames = st.builds(
    lambda labels, top, dot: ".".join([*labels, top]) + dot,
    st.lists(label, min_size=1, max_size=4), tld, st.sampled_from(["", "."]),
)
ports = st.integers(min_value=1, max_value=65535)


@given(hostnames, ports, st.booleans())
@settings(max_examples=300)
def test_a_host_name_parses_to_itself_and_renders_back(name: str, port: int, fallback: bool) -> None:
    text = f"{port} tcp {name}\n" + (f"{name}\n" if fallback else "")
    rules = parse_destinations(text)
    expected = Name(name.removesuffix(".").lower())
    assert rules.mappings[0].address == expected
    assert rules.fallbacks == ((expected,) if fallback else ())
    again = parse_destinations(format_destinations(rules))
    assert [m[:4] for m in again.mappings] == [m[:4] for m in rules.mappings] and again.fallbacks == rules.fallbacks


@given(st.text(alphabet="0123456789.", min_size=1, max_size=20))
@settings(max_examples=300)
def test_digits_and_dots_are_an_address_never_a_name(text: str) -> None:
    try:
        rules = parse_destinations(f"80 tcp {text}\n")
    except ConfigError as error:
        (problem,) = error.problems
        assert "host name" not in problem.message  # an address's own mistake
        return
    assert isinstance(rules.mappings[0].address, ipaddress.IPv4Address)


@given(st.text(max_size=80))
@settings(max_examples=300)
def test_any_destination_field_is_an_address_a_name_or_one_problem(text: str) -> None:
    fields = text.split()
    if len(fields) != 1 or fields[0].startswith("#"):
        return
    try:
        rules = parse_destinations(f"80 tcp {fields[0]}\n")
    except ConfigError as error:
        assert len(error.problems) == 1 and error.problems[0].line == 1
        return
    address = rules.mappings[0].address
    assert isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address, Name))
    if isinstance(address, Name):
        assert len(address.text) <= 253 and address.text == address.text.lower()


ipv4 = st.ip_addresses(v=4, network="203.0.113.0/24").filter(lambda a: a.packed[-1] not in (0, 255))
ipv6 = st.ip_addresses(v=6, network="2001:db8:2::/64")
NAMES = [Name("api.example.com"), Name("mirror.example.com"), Name("b.example.org")]


@st.composite
def named_configs(draw: st.DrawFn) -> str:
    lines = []
    for port in draw(st.lists(ports, unique=True, max_size=8)):
        target = draw(st.sampled_from([*map(str, NAMES), "203.0.113.25", "2001:db8:2::25"]))
        proto = draw(st.sampled_from(["tcp", "udp", "sctp"]))
        remote = draw(st.one_of(st.just(""), ports.map(str)))
        lines.append(f"{port} {proto} {target} {remote}".strip())
    if draw(st.booleans()):
        lines.append(str(draw(st.sampled_from(NAMES))))
    return "\n".join(lines) + "\n"


answer_sets = st.lists(st.one_of(ipv4, ipv6), max_size=4).map(lambda a: Answer(tuple(dict.fromkeys(a)), 1700000000.0))


def facts(draw_answers: list[Answer]):  # type: ignore[no-untyped-def]
    return DEFAULT_FACTS._replace(answers=tuple(sorted(zip(NAMES, draw_answers, strict=True))))


ENV = {"EGRESS_SOURCE": "192.0.2.99/24,2001:db8:1::99/64", "EGRESS_GATEWAY": "192.0.2.1,2001:db8:1::1"}


@given(named_configs(), st.lists(answer_sets, min_size=3, max_size=3), st.lists(answer_sets, min_size=3, max_size=3))
@settings(max_examples=200)
def test_a_new_answer_is_only_chain_rewrites_of_the_same_structure(text: str, one: list[Answer], two: list[Answer]) -> None:
    try:
        config = load_environment({**ENV, "EGRESS_DESTINATION": text})
    except ConfigError:
        return
    before, after = build_table(config, facts(one)), build_table(config, facts(two))
    assert before.tag == after.tag and before.skeleton() == after.skeleton()
    assert all(isinstance(op, SetChain) for op in diff(before, after).ops)
    assert before.rules() == after.rules()


@pytest.mark.lab
@given(named_configs(), st.lists(answer_sets, min_size=3, max_size=3), st.lists(answer_sets, min_size=3, max_size=3))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_plan_with_names_and_its_next_answer_are_accepted_by_nft(
    scratch_namespace: str, text: str, one: list[Answer], two: list[Answer]
) -> None:
    try:
        config = load_environment({**ENV, "EGRESS_DESTINATION": text})
    except ConfigError:
        return
    before, after = build_table(config, facts(one)), build_table(config, facts(two))
    tx = Transaction()
    tx.replace_table(before)
    # The whole table, then a new answer's chain rewrites, as one script: both must be valid.
    script = str(tx) + str(diff(before, after))
    done = subprocess.run(
        ["ip", "netns", "exec", scratch_namespace, "nft", "--check", "-f", "-"],
        input=script, capture_output=True, text=True, timeout=30, check=False,
    )
    assert done.returncode == 0, done.stderr + script
