"""Parsing and validation of the environment contract: every line form, every error."""

from __future__ import annotations

import ipaddress
import os

import pytest

from egress_router.config import load_environment, parse_destinations
from egress_router.errors import ConfigError
from egress_router.model import Mode

SEED = """\
80   tcp 203.0.113.25
8080 tcp 203.0.113.26 80
8443 tcp 203.0.113.26 443
203.0.113.27
"""

BASE = {"EGRESS_SOURCE": "192.0.2.99/24", "EGRESS_GATEWAY": "192.0.2.1"}


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_destinations(text)
    return [str(p) for p in caught.value.problems]


def env(**overrides: str) -> dict[str, str]:
    return {**BASE, "EGRESS_DESTINATION": SEED, **overrides}


def test_seed_example_parses_as_the_document_says() -> None:
    rules = parse_destinations(SEED)
    assert [(m.port, m.protocol, str(m.address), m.remote_port) for m in rules.mappings] == [
        (80, "tcp", "203.0.113.25", 80),
        (8080, "tcp", "203.0.113.26", 80),
        (8443, "tcp", "203.0.113.26", 443),
    ]
    assert rules.fallbacks == (ipaddress.ip_address("203.0.113.27"),)


def test_mappings_remember_their_line_numbers() -> None:
    rules = parse_destinations("# web\n\n80 tcp 203.0.113.25\n")
    assert rules.mappings[0].line == 3


@pytest.mark.parametrize(
    "text",
    [
        "80\ttcp\t203.0.113.25",
        "  80   tcp    203.0.113.25   ",
        "80 TCP 203.0.113.25",
        "80 Tcp 203.0.113.25\r\n",
        "# comment\r\n\r\n80 tcp 203.0.113.25\r\n",
        "   # indented comment\n80 tcp 203.0.113.25",
    ],
    ids=["tabs", "extra-spaces", "upper-case", "mixed-case-crlf", "crlf-comment-blank", "indented-comment"],
)
def test_liberal_where_users_expect_it(text: str) -> None:
    rules = parse_destinations(text)
    assert [(m.port, m.protocol, str(m.address)) for m in rules.mappings] == [(80, "tcp", "203.0.113.25")]


def test_udp_and_tcp_may_use_the_same_port_for_different_places() -> None:
    rules = parse_destinations("53 udp 203.0.113.25\n53 tcp 203.0.113.26\n")
    assert {(m.protocol, str(m.address)) for m in rules.mappings} == {
        ("udp", "203.0.113.25"),
        ("tcp", "203.0.113.26"),
    }


def test_sctp_is_a_protocol() -> None:
    assert parse_destinations("9000 sctp 203.0.113.25").mappings[0].protocol == "sctp"


def test_ipv6_destinations_parse() -> None:
    rules = parse_destinations("80 tcp 2001:db8:2::25 8080\n2001:db8:2::27\n")
    assert rules.mappings[0].family == 6 and rules.mappings[0].remote_port == 8080
    assert rules.fallback(6) == ipaddress.ip_address("2001:db8:2::27")


def test_one_fallback_per_family_may_close_the_list() -> None:
    rules = parse_destinations("80 tcp 203.0.113.25\n203.0.113.27\n2001:db8:2::27\n")
    assert len(rules.fallbacks) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("80 tcp 999.1.2.3", "'999.1.2.3' is not a valid IP address"),
        ("80 tcp 203.0.113", "is not a valid IP address"),
        ("80 tcp 203.0.113.025", "is not a valid IP address"),
        ("80 tcp 127.0.0.1", "not a unicast address"),
        ("80 tcp 0.0.0.0", "not a unicast address"),
        ("80 tcp 224.0.0.1", "not a unicast address"),
        ("80 tcp 255.255.255.255", "broadcast"),
        ("80 tcp 169.254.1.1", "link-local"),
        ("80 tcp fe80::1%eth0", "zone index"),
        ("0 tcp 203.0.113.25", "port 0 is out of range 1-65535"),
        ("65536 tcp 203.0.113.25", "port 65536 is out of range"),
        ("-1 tcp 203.0.113.25", "port '-1' is not a number"),
        ("http tcp 203.0.113.25", "port 'http' is not a number"),
        ("80 tcp 203.0.113.25 0", "remote port 0 is out of range"),
        ("80 tcp 203.0.113.25 99999", "remote port 99999 is out of range"),
        ("80 icmp 203.0.113.25", "protocol 'icmp' is not one of tcp, udp, sctp"),
        ("80 tcp", "expected '<port> <protocol> <ip> [<remote_port>]' or a lone fallback"),
        ("80 tcp 203.0.113.25 80 90", "got 5 fields"),
        ("80 tcp 203.0.113.25 # web", "a comment must be on a line of its own"),
        ("1.2.3.4.5", "is not a valid IP address"),
    ],
)
def test_strict_where_a_mistake_would_do_harm(text: str, message: str) -> None:
    (found,) = problems(text)
    assert found.startswith("EGRESS_DESTINATION line 1: ")
    assert message in found
    assert repr(text.strip()) in found  # the offending text is quoted back


def test_fallback_must_be_last() -> None:
    (found,) = problems("203.0.113.27\n80 tcp 203.0.113.25\n")
    assert found.startswith("EGRESS_DESTINATION line 2: the fallback on line 1 must be the last rule")


def test_a_second_fallback_of_the_same_family_is_an_error() -> None:
    (found,) = problems("203.0.113.27\n203.0.113.28\n")
    assert "line 2: a second IPv4 fallback (the first is on line 1)" in found


def test_a_local_port_is_used_once_per_protocol() -> None:
    (found,) = problems("80 tcp 203.0.113.25\n80 tcp 203.0.113.26\n")
    assert "line 2: local port 80/tcp is already used on line 1" in found


def test_every_problem_is_reported_at_once_in_line_order() -> None:
    found = problems("80 tcp 999.1.2.3\n# fine\n81 tcp 203.0.113.25\n0 udp 203.0.113.25\n82 xyz 203.0.113.25\n")
    assert [f.split(":")[0] for f in found] == [
        "EGRESS_DESTINATION line 1",
        "EGRESS_DESTINATION line 4",
        "EGRESS_DESTINATION line 5",
    ]


def test_environment_of_the_seed_pod() -> None:
    config = load_environment(env(EGRESS_ROUTER_MODE="init"))
    assert config.mode is Mode.INIT
    assert [str(s) for s in config.sources] == ["192.0.2.99/24"]
    assert [str(g) for g in config.gateways] == ["192.0.2.1"]
    assert config.egress_interface == "macvlan0" and config.pod_interface == "eth0"
    assert not config.debug


def test_mode_defaults_to_legacy_and_debug_is_any_value() -> None:
    config = load_environment(env(EGRESS_ROUTER_DEBUG="1"))
    assert config.mode is Mode.LEGACY and config.debug


def test_source_without_prefix_is_a_host_address() -> None:
    config = load_environment(env(EGRESS_SOURCE="192.0.2.99"))
    assert str(config.sources[0]) == "192.0.2.99/32"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"EGRESS_SOURCE": "192.0.2.99/33"}, "EGRESS_SOURCE: prefix length '33' of '192.0.2.99/33' is not in 0-32"),
        ({"EGRESS_SOURCE": "192.0.2.99/x"}, "prefix length 'x'"),
        ({"EGRESS_SOURCE": "192.0.2.0/24"}, "is not a host address of 192.0.2.0/24"),
        ({"EGRESS_SOURCE": "999.0.2.1"}, "EGRESS_SOURCE: '999.0.2.1' is not a valid IP address"),
        ({"EGRESS_GATEWAY": "192.0.2.99"}, "EGRESS_GATEWAY: 192.0.2.99 is also the source address"),
        ({"EGRESS_GATEWAY": "2001:db8:1::1"}, "has no IPv4 address to pair"),
        ({"EGRESS_ROUTER_MODE": "proxy"}, "EGRESS_ROUTER_MODE: unknown mode 'proxy'"),
        ({"EGRESS_DESTINATION": "# nothing\n"}, "EGRESS_DESTINATION: holds no rule"),
        ({"EGRESS_DESTINATION": "80 tcp 2001:db8:2::25"}, "EGRESS_SOURCE has no IPv6 address"),
        ({"EGRESS_INTERFACE": "a/b"}, "EGRESS_INTERFACE: 'a/b' is not a valid interface name"),
        ({"EGRESS_INTERFACE": "x" * 16}, "is not a valid interface name"),
        ({"EGRESS_INTERFACE": "eth0"}, "EGRESS_INTERFACE: is the same as EGRESS_POD_INTERFACE"),
        ({"EGRESS_ROUTER_HTTP_PORT": "70000"}, "EGRESS_ROUTER_HTTP_PORT: HTTP port 70000 is out of range"),
        ({"EGRESS_DESTINATION": "9090 tcp 203.0.113.25"}, "router's own health and metrics port"),
    ],
)
def test_environment_errors_name_the_variable(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_environment(env(**overrides))
    assert any(message in str(p) for p in caught.value.problems), caught.value.problems


def test_missing_variables_are_all_reported() -> None:
    with pytest.raises(ConfigError) as caught:
        load_environment({})
    assert {p.variable for p in caught.value.problems} == {
        "EGRESS_SOURCE",
        "EGRESS_GATEWAY",
        "EGRESS_DESTINATION",
    }


def test_the_http_port_may_be_mapped_when_no_server_listens() -> None:
    load_environment(env(EGRESS_DESTINATION="9090 tcp 203.0.113.25", EGRESS_ROUTER_MODE="init"))
    load_environment(env(EGRESS_DESTINATION="9090 tcp 203.0.113.25", EGRESS_ROUTER_HTTP_PORT="0"))
    load_environment(env(EGRESS_DESTINATION="9090 udp 203.0.113.25"))


def test_proxy_modes_need_no_destination() -> None:
    config = load_environment({**BASE, "EGRESS_ROUTER_MODE": "http-proxy"})
    assert config.mode is Mode.HTTP_PROXY and not config.destinations.mappings


def test_destination_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "destinations"
    path.write_text("80 tcp 203.0.113.25\n203.0.113.27\n")
    config = load_environment({**BASE, "EGRESS_DESTINATION_FILE": str(path)})
    assert len(config.destinations.mappings) == 1 and config.destination_file == str(path)


def test_destination_file_errors_name_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "destinations"
    path.write_text("80 tcp 203.0.113.25\n80 tcp 203.0.113.26\n")
    with pytest.raises(ConfigError) as caught:
        load_environment({**BASE, "EGRESS_DESTINATION_FILE": str(path)})
    assert str(caught.value.problems[0]).startswith(f"EGRESS_DESTINATION_FILE ({path}) line 2: ")


def test_destination_file_missing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as caught:
        load_environment({**BASE, "EGRESS_DESTINATION_FILE": str(tmp_path / "nope")})
    assert "cannot read" in str(caught.value) and "No such file" in str(caught.value)


def test_setting_both_destination_sources_is_an_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "destinations"
    path.write_text(SEED)
    with pytest.raises(ConfigError) as caught:
        load_environment(env(EGRESS_DESTINATION_FILE=str(path)))
    assert "set either EGRESS_DESTINATION or EGRESS_DESTINATION_FILE, not both" in str(caught.value)


def test_dual_stack_source_and_gateway() -> None:
    config = load_environment(
        {
            "EGRESS_SOURCE": "192.0.2.99/24, 2001:db8:1::99/64",
            "EGRESS_GATEWAY": "192.0.2.1,2001:db8:1::1",
            "EGRESS_DESTINATION": "80 tcp 203.0.113.25\n80 tcp 2001:db8:2::25\n",
        }
    )
    assert config.families == (4, 6)
    assert str(config.gateway(6)) == "2001:db8:1::1"


@pytest.mark.parametrize(
    "value",
    ["192.0.2.99,192.0.2.98", "192.0.2.99,", "192.0.2.99,2001:db8::1,2001:db8::2"],
)
def test_at_most_one_source_per_family(value: str) -> None:
    with pytest.raises(ConfigError):
        load_environment(env(EGRESS_SOURCE=value))


def test_an_ipv6_gateway_may_be_link_local_a_destination_may_not() -> None:
    config = load_environment(
        {"EGRESS_SOURCE": "2001:db8:1::99/64", "EGRESS_GATEWAY": "fe80::1", "EGRESS_DESTINATION": "80 tcp 2001:db8:2::25"}
    )
    assert str(config.gateway(6)) == "fe80::1"
    with pytest.raises(ConfigError, match="link-local"):
        load_environment({"EGRESS_SOURCE": "2001:db8:1::99/64", "EGRESS_GATEWAY": "fe80::1", "EGRESS_DESTINATION": "80 tcp fe80::25"})


@pytest.mark.parametrize("name", ['e"th0', "eth\\0", "eth\t0"])
def test_interface_names_nft_cannot_quote_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="EGRESS_POD_INTERFACE: .* is not a valid interface name"):
        load_environment(env(EGRESS_POD_INTERFACE=name))


def test_log_format_is_checked() -> None:
    assert load_environment(env(EGRESS_ROUTER_LOG_FORMAT="json")).log_format == "json"
    with pytest.raises(ConfigError, match="EGRESS_ROUTER_LOG_FORMAT: 'yaml' is not one of text, json"):
        load_environment(env(EGRESS_ROUTER_LOG_FORMAT="yaml"))


def test_a_byte_order_mark_is_not_part_of_the_first_rule() -> None:
    assert parse_destinations("\ufeff80 tcp 203.0.113.25\r\n").mappings[0].port == 80


def test_a_misplaced_fallback_is_reported_once_not_at_every_later_rule() -> None:
    text = "203.0.113.27\n" + "".join(f"{p} tcp 203.0.113.25\n" for p in range(80, 90))
    (found,) = problems(text)
    assert found.startswith("EGRESS_DESTINATION line 2: the fallback on line 1 must be the last rule")


def test_the_first_problems_are_kept_and_the_rest_counted() -> None:
    from egress_router.config import MAX_PROBLEMS

    text = "80 tcp 203.0.113.25\n" * 1000
    with pytest.raises(ConfigError) as caught:
        parse_destinations(text)
    error = caught.value
    assert len(error.problems) == MAX_PROBLEMS and error.more == 999 - MAX_PROBLEMS
    assert [p.line for p in error.problems] == list(range(2, MAX_PROBLEMS + 2))
    assert error.lines()[-1] == f"config error: ... and {999 - MAX_PROBLEMS:,} more problem(s) not shown"


def test_checking_stops_after_so_many_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    import egress_router.config as config

    monkeypatch.setattr(config, "STOP_AFTER_PROBLEMS", 50)
    with pytest.raises(ConfigError) as caught:
        parse_destinations("x\n" * 1000 + "80 tcp 203.0.113.25\n")
    error = caught.value
    assert error.count == 50
    assert error.note == "EGRESS_DESTINATION: checking stopped at line 50, after 50 problems"
    assert error.lines()[-1] == f"config error: {error.note}"


def test_rules_of_the_wrong_family_are_capped_too() -> None:
    text = "".join(f"{port} tcp 2001:db8:2::1\n" for port in range(1, 501))
    with pytest.raises(ConfigError) as caught:
        load_environment({**BASE, "EGRESS_DESTINATION": text})
    assert len(caught.value.problems) == 20 and caught.value.more == 480
    assert "has no IPv6 address" in str(caught.value.problems[0])


def test_a_destination_file_over_the_size_cap_is_refused_unread(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from egress_router.config import MAX_FILE_BYTES

    path = tmp_path / "huge"
    with open(path, "wb") as handle:  # sparse: no disk and no memory spent on it
        handle.truncate(57 * 2**20)
    with pytest.raises(ConfigError) as caught:
        load_environment({**BASE, "EGRESS_DESTINATION_FILE": str(path)})
    (problem,) = caught.value.problems
    assert str(problem) == (
        f"EGRESS_DESTINATION_FILE: {path} is 57.0 MiB, over the {MAX_FILE_BYTES // 2**20} MiB "
        "limit of a destination file (not read)"
    )


def test_a_file_at_the_cap_is_read(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from egress_router.config import read_destination_file

    path = tmp_path / "rules"
    path.write_text("80 tcp 203.0.113.25\n")
    assert read_destination_file(str(path), limit=20) == "80 tcp 203.0.113.25\n"
    with pytest.raises(ConfigError, match="over the"):
        read_destination_file(str(path), limit=19)


def _unreadable(tmp_path, kind: str) -> str:  # type: ignore[no-untyped-def]
    path = tmp_path / "destinations"
    if kind == "directory":
        path.mkdir()
    elif kind == "named pipe":
        os.mkfifo(path)
    elif kind == "symlink loop":
        path.symlink_to("loop")
        (tmp_path / "loop").symlink_to("destinations")
    elif kind == "dangling symlink":
        path.symlink_to("..data/destinations")
    elif kind == "not UTF-8":
        path.write_bytes(b"80 tcp 203.0.113.25 \xff\n")
    return str(path)


UNREADABLE = {
    "missing": "No such file or directory",
    "dangling symlink": "No such file or directory",
    "directory": "it is a directory, not a file",
    "named pipe": "it is a named pipe, not a file",  # and opening it does not hang
    "symlink loop": "Too many levels of symbolic links",
    "not UTF-8": "is not UTF-8 text",
}


@pytest.mark.parametrize("kind", list(UNREADABLE))
def test_any_unreadable_path_is_one_clear_line(tmp_path, kind: str) -> None:  # type: ignore[no-untyped-def]
    path = _unreadable(tmp_path, kind)
    with pytest.raises(ConfigError) as caught:
        load_environment({**BASE, "EGRESS_DESTINATION_FILE": path})
    (problem,) = caught.value.problems
    assert problem.variable == "EGRESS_DESTINATION_FILE" and path in problem.message
    assert UNREADABLE[kind] in problem.message


def test_a_symlink_that_resolves_is_read(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "..v1").mkdir()
    (tmp_path / "..v1" / "destinations").write_text(SEED)
    (tmp_path / "..data").symlink_to("..v1")
    (tmp_path / "destinations").symlink_to("..data/destinations")
    config = load_environment({**BASE, "EGRESS_DESTINATION_FILE": str(tmp_path / "destinations")})
    assert len(config.destinations.mappings) == 3
