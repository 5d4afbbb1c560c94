"""Input that cannot surprise: whatever the text, the parser answers with rules or with config
errors, never another exception; what parses renders back to the same rules; every plan it
leads to is accepted by nft."""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egress_router.config import format_destinations, load_environment, parse_destinations
from egress_router.errors import ConfigError
from egress_router.nft import Transaction
from egress_router.plan import build_plan

ports = st.integers(min_value=1, max_value=65535)
ipv4 = st.ip_addresses(v=4, network="203.0.113.0/24").filter(lambda a: a.packed[-1] not in (0, 255))
ipv6 = st.ip_addresses(v=6, network="2001:db8:2::/64")
protocols = st.sampled_from(["tcp", "udp", "sctp", "TCP", "Udp"])
spaces = st.sampled_from([" ", "  ", "\t", " \t "])
eol = st.sampled_from(["\n", "\r\n"])


@st.composite
def rule_lines(draw: st.DrawFn) -> str:
    sep = draw(spaces)
    fields = [str(draw(ports)), draw(protocols), str(draw(st.one_of(ipv4, ipv6)))]
    if draw(st.booleans()):
        fields.append(str(draw(ports)))
    return sep.join(fields)


@st.composite
def configs(draw: st.DrawFn) -> str:
    lines = draw(st.lists(st.one_of(rule_lines(), st.just(""), st.just("# comment")), max_size=30))
    if draw(st.booleans()):
        lines.append(str(draw(ipv4)))
    if draw(st.booleans()):
        lines.append(str(draw(ipv6)))
    end = draw(eol)
    return end.join(lines) + end


# Text built from the alphabet the format uses, so that most of it is nearly valid.
near_text = st.text(alphabet="0123456789abcdef.:/ \t\r\n#tcpudsTCPUDS-x%", max_size=200)


@given(st.one_of(near_text, st.text(max_size=200), configs()))
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_any_text_parses_or_yields_config_errors(text: str) -> None:
    try:
        parse_destinations(text)
    except ConfigError as error:
        assert error.problems and all(p.line is None or p.line >= 1 for p in error.problems)


@given(configs())
@settings(max_examples=300)
def test_what_parses_renders_back_to_the_same_rules(text: str) -> None:
    try:
        rules = parse_destinations(text)
    except ConfigError:
        return  # duplicates drawn by chance: covered above
    again = parse_destinations(format_destinations(rules))
    assert [m[:4] for m in again.mappings] == [m[:4] for m in rules.mappings]
    assert again.fallbacks == rules.fallbacks


@pytest.mark.lab
@given(text=configs(), mode=st.sampled_from(["init", "legacy"]))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_rendered_plan_is_accepted_by_nft(scratch_namespace: str, text: str, mode: str) -> None:
    env = {
        "EGRESS_SOURCE": "192.0.2.99/24,2001:db8:1::99/64",
        "EGRESS_GATEWAY": "192.0.2.1,2001:db8:1::1",
        "EGRESS_DESTINATION": text,
        "EGRESS_ROUTER_MODE": mode,
    }
    try:
        config = load_environment(env)
    except ConfigError:
        return
    table = build_plan(config).table
    assert table is not None
    tx = Transaction()
    tx.replace_table(table)
    done = subprocess.run(
        ["ip", "netns", "exec", scratch_namespace, "nft", "--check", "-f", "-"],
        input=str(tx), capture_output=True, text=True, timeout=30, check=False,
    )
    assert done.returncode == 0, done.stderr


@given(st.text(alphabet="ab\n\r\ufeff", max_size=300), st.integers(min_value=1, max_value=20))
@settings(max_examples=300)
def test_lines_split_a_chunk_at_a_time_are_the_lines(text: str, chunk: int) -> None:
    import egress_router.config as config

    saved = config.LINES_AT_ONCE
    config.LINES_AT_ONCE = chunk
    try:
        assert list(config._lines(text)) == text.removeprefix("\ufeff").split("\n")
    finally:
        config.LINES_AT_ONCE = saved
