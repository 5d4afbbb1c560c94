"""Destinations by name, without a network: parsing, planning, the per-name chains' diff, the
follower's timing and failures, and the daemon applying a new answer (fakes)."""

from __future__ import annotations

import io
import ipaddress
from pathlib import Path

import pytest

from egress_router.config import format_destinations, load_environment, parse_destinations
from egress_router.daemon import Daemon
from egress_router.dns import Answer
from egress_router.dns.chains import UNRESOLVED, Target, parse_chain
from egress_router.dns.follow import RETRY_MAX, Follower
from egress_router.dns.resolve import DnsError, Lookup, refusal
from egress_router.errors import ConfigError
from egress_router.log import Log
from egress_router.metrics import Stats
from egress_router.model import Name
from egress_router.neighbours.fake import RecordingAnnouncer
from egress_router.network.fake import FakeLink, FakeNet, pod_network
from egress_router.nft.fake import FakeNft, FakeTableReader
from egress_router.nft.table import SCRIPT, SetChain, diff
from egress_router.plan import DEFAULT_FACTS, build_table
from egress_router.reconcile import Router

A = ipaddress.ip_address
BASE = {"EGRESS_SOURCE": "192.0.2.99/24", "EGRESS_GATEWAY": "192.0.2.1"}


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_destinations(text)
    return [p.message for p in caught.value.problems]


# -- parsing ---------------------------------------------------------------------------------


def test_a_name_stands_wherever_an_address_may() -> None:
    rules = parse_destinations("443 tcp api.example.com\n8443 tcp API.Example.COM. 443\nmirror.example.com\n")
    assert [(r.port, r.address, r.remote_port) for r in rules.mappings] == [
        (443, Name("api.example.com"), 443),
        (8443, Name("api.example.com"), 443),
    ]
    assert rules.fallbacks == (Name("mirror.example.com"),)
    assert rules.fallback(4) == rules.fallback(6) == Name("mirror.example.com")
    assert rules.names == (Name("api.example.com"), Name("mirror.example.com"))
    assert parse_destinations(format_destinations(rules)) == rules


@pytest.mark.parametrize("text", ["10.0.0.256", "1.2.3", "300.1.1.1", "2001:db8::g", "::1:"])
def test_what_looks_like_an_address_is_one_and_never_a_lookup(text: str) -> None:
    (message,) = problems(f"80 tcp {text}\n")
    assert message == f"{text!r} is not a valid IP address"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("a_b.example.com", "other than letters, digits and '-'"),
        ("-a.example.com", "starts or ends with '-'"),
        ("a..example.com", "an empty label"),
        ("x" * 64 + ".example.com", "at most 63"),
        (".".join(["abcdefghi"] * 26), "at most 253"),
        ("mirror", "a single label"),
        ("a.123", "all digits"),
        ("é.example.com", "other than letters"),
    ],
)
def test_a_bad_name_is_one_line_in_the_contracts_wording(text: str, why: str) -> None:
    (message,) = problems(f"80 tcp {text}\n")
    assert message.startswith(f"{text!r} is neither a valid IP address nor a valid host name: ") and why in message


def test_a_name_of_253_characters_is_one() -> None:
    name = ".".join(["a" * 62] * 4)[:253].rstrip(".")
    assert len(name) <= 253
    assert parse_destinations(f"80 tcp {name}.\n").mappings[0].address == Name(name)


def test_a_name_takes_its_port_in_both_families() -> None:
    assert problems("80 tcp api.example.com\n80 tcp 203.0.113.25\n") == ["local port 80/tcp is already used on line 1"]
    assert problems("80 tcp 2001:db8::1\n80 tcp api.example.com\n") == ["local port 80/tcp is already used on line 1"]
    assert problems("203.0.113.27\nmirror.example.com\n") == ["a second fallback (the first is on line 1)"]
    parse_destinations("80 tcp api.example.com\n80 udp api.example.com\n")


def test_a_name_is_never_the_wrong_family_and_the_ttl_bounds_are_checked() -> None:
    config = load_environment({**BASE, "EGRESS_DESTINATION": "80 tcp api.example.com\nmirror.example.com\n"})
    assert config.dns_min_ttl == 5 and config.dns_max_ttl == 1800
    env = {**BASE, "EGRESS_DESTINATION": "80 tcp api.example.com\n"}
    for value, expected in (("0", "out of range"), ("5s", "not a number"), ("-1", "not a number"), ("1e3", "not a number")):
        with pytest.raises(ConfigError) as caught:
            load_environment({**env, "EGRESS_ROUTER_DNS_MIN_TTL": value})
        assert expected in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        load_environment({**env, "EGRESS_ROUTER_DNS_MIN_TTL": "60", "EGRESS_ROUTER_DNS_MAX_TTL": "30"})
    assert "EGRESS_ROUTER_DNS_MIN_TTL" in str(caught.value)
    assert load_environment({**env, "EGRESS_ROUTER_DNS_MIN_TTL": "1.5"}).dns_min_ttl == 1.5


# -- planning --------------------------------------------------------------------------------


def config(text: str, **more: str):  # type: ignore[no-untyped-def]
    return load_environment({**BASE, "EGRESS_DESTINATION": text, **more})


def answers(**names: list[str]) -> tuple[tuple[Name, Answer], ...]:
    return tuple(
        sorted((Name(n.replace("_", ".")), Answer(tuple(A(a) for a in addresses), 1000.0)) for n, addresses in names.items())
    )


NAMED = "80 tcp 203.0.113.25\n443 tcp api.example.com\n8443 tcp api.example.com 443\nmirror.example.com\n"


def test_named_rules_are_a_verdict_map_to_per_name_chains_declared_empty() -> None:
    table = build_table(config(NAMED))
    chain = "dns4_tcp_443_api.example.com"
    assert f"meta nfproto ipv4 tcp dport vmap {{ 443 : goto {chain}, 8443 : goto {chain} }}" in table.body
    assert "meta nfproto ipv4 counter name fallback4 goto dns4_fallback_mirror.example.com" in table.body
    assert "chain dns4_tcp_443_api.example.com {\n}" in table.body
    assert "ip6" not in "".join(rule for _, rule in table.dynamic)  # IPv4 source: IPv4 chains only
    assert dict(table.dynamic) == {"dns4_tcp_443_api.example.com": UNRESOLVED, "dns4_fallback_mirror.example.com": UNRESOLVED}
    assert table.map("tcp4").elements.keys() == {80}  # the literal rule alone is in the map
    assert table.rules()["dns4_tcp_443_api.example.com"] == 1


def test_an_answer_is_not_another_structure_and_changes_its_chain_alone() -> None:
    first = build_table(config(NAMED), DEFAULT_FACTS._replace(answers=answers(api_example_com=["203.0.113.26"])))
    moved = answers(api_example_com=["203.0.113.27", "203.0.113.26"], mirror_example_com=["203.0.113.25"])
    second = build_table(config(NAMED), DEFAULT_FACTS._replace(answers=moved))
    assert first.tag == second.tag and first.skeleton() == second.skeleton()
    tx = diff(first, second)
    assert tx.route == SCRIPT and all(isinstance(op, SetChain) for op in tx.ops)
    rules = {op.chain: op.rule for op in tx.ops if isinstance(op, SetChain)}
    assert rules["dns4_tcp_443_api.example.com"] == (
        "meta l4proto tcp dnat ip to numgen inc mod 2 map { 0 : 203.0.113.26 . 443, 1 : 203.0.113.27 . 443 } "
        'comment "since 1000"'
    )
    assert rules["dns4_fallback_mirror.example.com"].startswith("dnat ip to numgen inc mod 1 map { 0 : 203.0.113.25 }")
    ref = "inet egress_router"
    assert str(tx) == "".join(f"flush chain {ref} {c}\nadd rule {ref} {c} {r}\n" for c, r in sorted(rules.items()))
    assert not diff(second, second)


def test_a_long_name_keeps_its_chain_within_nfts_limit_and_chains_read_back() -> None:
    name = Name(".".join(["a" * 60] * 4))
    chain = Target(4, name, "tcp", 443).chain
    assert len(chain) <= 200 and chain != Target(4, Name(name.text + "x"), "tcp", 443).chain
    assert parse_chain("dns6_udp_53_ns.example.com") == (6, "udp", 53, "ns.example.com")
    assert parse_chain("dns4_fallback_m.example.com") == (4, None, None, "m.example.com")
    assert parse_chain("prerouting") is None


def test_the_routers_own_and_unroutable_answers_are_refused() -> None:
    own = (A("192.0.2.99"), A("198.51.100.2"))
    assert refusal(A("127.0.0.1"), own) == "loopback"
    assert refusal(A("169.254.1.1"), own) == "link-local"
    assert refusal(A("fe80::1"), own) == "link-local"
    assert refusal(A("224.0.0.1"), own) == "multicast"
    assert refusal(A("0.0.0.0"), own) == "unspecified"
    assert refusal(A("255.255.255.255"), own) == "broadcast"
    assert refusal(A("198.51.100.2"), own) == "the router's own address"
    assert refusal(A("203.0.113.25"), own) is None


# -- the follower ----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Lookups:
    """A resolver that answers what the test says."""

    def __init__(self) -> None:
        self.answer: Lookup | str = Lookup((A("203.0.113.25"),), 1)
        self.asked: list[Name] = []

    def __call__(self, name: Name) -> Lookup:
        self.asked.append(name)
        if isinstance(self.answer, str):
            raise DnsError(name, self.answer)
        return self.answer


def test_a_name_is_resolved_again_at_its_ttl_between_the_floor_and_the_cap() -> None:
    clock, lookups = Clock(), Lookups()
    name = Name("api.example.com")
    follower = Follower([name], lookups, Log(stream=io.StringIO()), min_ttl=5, max_ttl=1800, clock=clock)
    assert follower.pending() == (name,)
    follower.resolve_one(name)
    assert follower.states[name].due == 105  # TTL 1 s, floor 5 s
    assert follower.pending() == () and follower.take() == ((name, follower.states[name].answer),)
    assert follower.take() is None  # nothing changed since
    lookups.answer = Lookup((A("203.0.113.25"),), 86400)
    follower.resolve_one(name)
    assert follower.states[name].due == 100 + 1800 and follower.take() is None  # same addresses


def test_a_failing_name_keeps_its_last_answer_and_backs_off_to_two_minutes() -> None:
    clock, lookups, log = Clock(), Lookups(), io.StringIO()
    name = Name("api.example.com")
    follower = Follower([name], lookups, Log(stream=log), clock=clock)
    follower.resolve_one(name)
    good = follower.states[name].answer
    lookups.answer = "timeout: no answer within 3 s"
    waits = []
    for _ in range(7):
        follower.resolve_one(name)
        waits.append(follower.states[name].due - clock.now)
    assert waits == [5, 10, 20, 40, 80, RETRY_MAX, RETRY_MAX]
    state = follower.states[name]
    assert state.answer == good and state.failures == 7 and "timeout" in state.last_error
    assert "keeping its last addresses" in log.getvalue()
    lookups.answer = Lookup((A("203.0.113.25"),), 30)
    follower.resolve_one(name)
    assert follower.states[name].failing == 0 and follower.states[name].due == clock.now + 30


def test_a_new_aaaa_answer_leaves_the_a_sides_chain_as_it_was() -> None:
    """A dual-stack name: only its AAAA record moves. The IPv4 chain's rule (its `since`
    included) is the same text, so the diff rewrites the IPv6 chain alone."""
    clock, lookups = Clock(), Lookups()
    name = Name("api.example.com")
    follower = Follower([name], lookups, Log(stream=io.StringIO()), clock=clock)
    lookups.answer = Lookup((A("203.0.113.25"), A("2001:db8::25")), 1)
    follower.resolve_one(name)
    first = follower.states[name].answer
    lookups.answer = Lookup((A("203.0.113.25"), A("2001:db8::26")), 1)
    follower.resolve_one(name)
    second = follower.states[name].answer
    assert second.since_of(4) == first.since_of(4) and second.since_of(6) >= first.since_of(6)
    v4, v6 = Target(4, name, "tcp", 443), Target(6, name, "tcp", 443)
    assert v4.rule(second.addresses, second.since_of(4)) == v4.rule(first.addresses, first.since_of(4))
    assert "2001:db8::26" in v6.rule(second.addresses, second.since_of(6))
    # A family that had no address before is new: its age starts now.
    assert Answer((A("203.0.113.25"),), 50.0).replaced((A("203.0.113.25"), A("2001:db8::1")), 60.0).since_of(6) == 60.0


def test_a_dual_stack_name_whose_aaaa_side_has_nothing_usable_keeps_its_last_ipv6_addresses() -> None:
    clock, lookups, log = Clock(), Lookups(), io.StringIO()
    name = Name("api.example.com")
    follower = Follower([name], lookups, Log(stream=log), clock=clock)
    lookups.answer = Lookup((A("203.0.113.25"), A("2001:db8::25")), 1)
    follower.resolve_one(name)
    first = follower.states[name].answer
    # The A record moves; the AAAA one points at loopback only.
    lookups.answer = Lookup((A("203.0.113.26"),), 1, ((A("::1"), "loopback"),), ((6, "no usable address: refused ::1 (loopback)"),))
    follower.resolve_one(name)
    state = follower.states[name]
    assert state.answer.addresses == (A("203.0.113.26"), A("2001:db8::25"))
    assert state.answer.since_of(6) == first.since_of(6)  # the IPv6 chain stays as it was
    assert state.failures == 1 and "loopback" in state.last_error and state.failing == 0
    assert "no usable IPv6 address, keeping its last ones" in log.getvalue()
    # A name never resolved in that family has nothing to keep: that family stays empty.
    other = Follower([name], lookups, Log(stream=io.StringIO()), clock=clock)
    other.resolve_one(name)
    assert other.states[name].answer.addresses == (A("203.0.113.26"),) and other.states[name].failures == 0


@pytest.mark.parametrize("answer", [Lookup((A("203.0.113.25"),), 1), "timeout: no answer within 3 s"])
def test_a_name_a_reload_drops_while_it_is_looked_up_is_forgotten_and_the_others_followed(answer: Lookup | str) -> None:
    clock, log = Clock(), io.StringIO()
    gone, added = Name("gone.example.com"), Name("added.example.com")
    follower: Follower

    def lookup(name: Name) -> Lookup:
        if name == gone:
            follower.follow([added])  # the reload lands while this lookup waits on the network
            if isinstance(answer, str):
                raise DnsError(name, answer)
            return answer
        return Lookup((A("203.0.113.26"),), 1)

    follower = Follower([gone], lookup, Log(stream=log), clock=clock)
    follower.resolve_one(gone)
    assert list(follower.states) == [added] and follower.pending() == (added,)
    follower.resolve_one(added)
    assert follower.take() == ((added, follower.states[added].answer),) and follower.pending() == ()


# -- the daemon ------------------------------------------------------------------------------


def test_the_daemon_applies_a_new_answer_to_its_chain_alone_and_a_restart_rewrites_it(tmp_path: Path) -> None:
    env = {**BASE, "EGRESS_DESTINATION": NAMED, "EGRESS_ROUTER_HTTP_PORT": "0"}
    net = FakeNet(links={"macvlan0": FakeLink(), "eth0": FakeLink(up=True)}, routes=pod_network())
    nft, log = FakeNft(), Log(stream=io.StringIO())
    router = Router(nft=nft, net=net, announcer=RecordingAnnouncer(), log=log)
    cfg = load_environment(env)
    router.apply(cfg)
    stats = Stats()
    lookups = Lookups()
    stats.names = Follower(cfg.destinations.names, lookups, log)  # not started: the test resolves
    daemon = Daemon(router, cfg, env, log, FakeTableReader(nft, net), stats)
    daemon.started()
    assert stats.ready and not stats.serving  # applied, but the names have no address yet
    for name in cfg.destinations.names:
        stats.names.resolve_one(name)
    writes = nft.writes
    daemon.tick()
    assert nft.writes == writes and nft.routes[-1] == SCRIPT  # no table written: chains only
    assert "flush chain inet egress_router dns4_tcp_443_api.example.com" in nft.scripts[-1]
    assert "add element" not in nft.scripts[-1] and "delete" not in nft.scripts[-1]
    assert stats.serving
    chains = nft.tables["inet egress_router"].chains
    assert "203.0.113.25 . 443" in chains["dns4_tcp_443_api.example.com"]
    daemon.check()  # the new chain is the baseline now, not drift
    assert stats.drift_repairs == 0 and stats.serving
    # A restart finds its structure: elements and chains by one transaction, the table kept.
    again = Router(nft=nft, net=net, announcer=RecordingAnnouncer(), log=log)
    again.answers = router.answers
    outcome = again.apply(cfg)
    assert not outcome.full_table and nft.writes == writes
    assert "flush chain" in nft.scripts[-1]


def test_validate_names_the_names(capsys: pytest.CaptureFixture[str]) -> None:
    from egress_router.cli import main

    assert main(["validate"], {**BASE, "EGRESS_DESTINATION": NAMED}) == 0
    out = capsys.readouterr().out
    assert out == "ok: environment: 3 rule(s), fallback mirror.example.com, names api.example.com, mirror.example.com\n"


def test_a_configuration_without_names_never_loads_the_dns_code() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from egress_router.config import load_environment\n"
        "from egress_router.plan import build_plan\n"
        "from egress_router.cli import render_plan\n"
        "from egress_router.lab.addresses import seed_env\n"
        "config = load_environment(seed_env('init'))\n"
        "build_plan(config); render_plan(config, resolve=True)\n"
        "print(sorted(m for m in sys.modules if m == 'dns' or m.startswith(('dns.', 'egress_router.dns'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_reload_adds_and_drops_names_and_a_follower_without_names_waits() -> None:
    import time

    lookups = Lookups()
    follower = Follower([], lookups, Log(stream=io.StringIO()))
    follower.start()
    try:
        time.sleep(0.05)
        assert follower.thread is not None and follower.thread.is_alive()  # no name yet: it waits
        follower.follow([Name("a.example.com")])
        deadline = time.monotonic() + 5
        while follower.pending() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert follower.pending() == () and lookups.asked == [Name("a.example.com")]
        follower.follow([Name("b.example.com")])
        assert [n for n, _ in follower.answers()] == [Name("b.example.com")]
    finally:
        follower.stop()


def test_reading_back_a_table_without_names_never_loads_the_dns_code() -> None:
    import subprocess
    import sys

    from egress_router.dns.chains import PREFIX
    from egress_router.nft.listing import NAMED_PREFIX

    assert NAMED_PREFIX == PREFIX
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from egress_router.nft.listing import parse_table\n"
        "parse_table(Path('tests/data/nft/seed-traffic.json').read_text())\n"
        "print(sorted(m for m in sys.modules if m.startswith('egress_router.dns')))\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert done.stdout.strip() == "[]"
