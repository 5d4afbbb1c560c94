"""The router end to end on the real kernel: every test checks the effect where it matters,
at the external server (which address and port answered, and which source address it saw).

The client pod's only way out is the router pod, and the LAN gateway has no route back to the
pod network: a reply reaches the client only when the router has SNATed the connection to the
reserved address, so `probe.source == 192.0.2.99` proves the whole path.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from egress_router.lab import SEED_EXPECTATIONS, Lab, seed_env
from egress_router.lab import addresses as A

pytestmark = pytest.mark.lab

SOURCE = A.SOURCE
WRONG_MAC = "02:00:00:00:00:01"


def init(lab: Lab, **overrides: str) -> None:
    """Run the router in init mode and insist that it succeeded."""
    done = lab.run_router(seed_env("init", **overrides))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


def assert_redirected(lab: Lab, port: int, server: tuple[str, int], protocol: str = "tcp") -> None:
    probe = lab.connect(port, protocol)
    assert probe.ok, f"{port}/{protocol}: {probe.error}"
    assert probe.server == server, f"{port}/{protocol} reached {probe.server}, not {server}"
    assert probe.source == SOURCE, f"{port}/{protocol}: the server saw {probe.source}"


def comparable(listing: str | None) -> str:
    """A table listing without what changes by itself (counters)."""
    assert listing is not None, "the router's table is missing"
    return re.sub(r"packets \d+ bytes \d+", "packets N bytes N", listing)


def macvlan_addresses(lab: Lab) -> list[str]:
    out = lab.exec("router", ["ip", "-4", "-o", "address", "show", "dev", "macvlan0"]).stdout
    return [line.split()[3] for line in out.splitlines()]


# -- each line form, and the fallback --------------------------------------------------------


@pytest.mark.parametrize(
    ("port", "protocol", "address", "remote_port"),
    SEED_EXPECTATIONS,
    ids=["port-proto-ip", "remote-port", "remote-port-2", "fallback-same-port"],
)
def test_the_seed_rules_reach_their_servers_from_the_reserved_source(
    router_lab: Lab, port: int, protocol: str, address: str, remote_port: int
) -> None:
    init(router_lab)
    assert_redirected(router_lab, port, (address, remote_port), protocol)


def test_the_fallback_takes_udp_too_and_keeps_the_port(router_lab: Lab) -> None:
    init(router_lab)
    assert_redirected(router_lab, 5001, ("203.0.113.27", 5001), "udp")


def test_udp_goes_through_a_mapping_with_a_remote_port(router_lab: Lab) -> None:
    init(router_lab, EGRESS_DESTINATION="53 udp 203.0.113.25 5353\n")
    assert_redirected(router_lab, 53, ("203.0.113.25", 5353), "udp")
    # The protocol is part of the rule: TCP to the same port has no mapping and no fallback.
    assert router_lab.connect(53, "tcp", timeout=2).error == "refused"


def test_unmapped_ports_are_refused_at_once_without_a_fallback(router_lab: Lab) -> None:
    init(router_lab, EGRESS_DESTINATION="80 tcp 203.0.113.25\n")
    started = time.monotonic()
    tcp = router_lab.connect(5000, "tcp", timeout=3)
    udp = router_lab.connect(5001, "udp", timeout=3)
    assert (tcp.error, udp.error) == ("refused", "refused")
    assert time.monotonic() - started < 1.0, "refusing must not wait for a timeout"
    assert_redirected(router_lab, 80, ("203.0.113.25", 80))


def test_the_router_is_not_a_plain_gateway_for_the_pods(router_lab: Lab) -> None:
    init(router_lab)
    # The client's node sends its packets for the server to the router pod, as a pod that
    # takes the router for its gateway would: only redirected connections pass.
    with router_lab.routed_through_router("203.0.113.25"):
        assert not router_lab.connect(80, address="203.0.113.25", timeout=1).ok
    assert router_lab.connect(80).source == SOURCE


# -- repeating and changing the configuration -------------------------------------------------


def fallback_packets(listing: str | None) -> int:
    """What the fallback's counter holds: init's table counts only that (legacy's also counts
    per port), so a table left in place keeps it and a rebuilt one starts again at 0."""
    found = re.search(r"counter fallback4 \{\s*packets (\d+) ", listing or "")
    assert found, listing
    return int(found.group(1))


def test_running_init_twice_changes_nothing_and_traffic_still_flows(router_lab: Lab) -> None:
    init(router_lab)
    routes = router_lab.exec("router", ["ip", "route"]).stdout
    assert_redirected(router_lab, 8080, ("203.0.113.26", 80))
    assert_redirected(router_lab, 5000, ("203.0.113.27", 5000))  # the fallback's
    first = router_lab.nft_table()
    assert fallback_packets(first) == 1  # counted
    init(router_lab)
    # A restart finds its own structure and writes only a difference (none here): the table,
    # what traffic counted in it included, is the one that was there.
    assert router_lab.nft_table() == first
    assert router_lab.exec("router", ["ip", "route"]).stdout == routes
    assert macvlan_addresses(router_lab) == [f"{SOURCE}/24"]
    for port, protocol, address, remote_port in SEED_EXPECTATIONS:
        assert_redirected(router_lab, port, (address, remote_port), protocol)


def test_a_restart_puts_back_a_mapping_deleted_by_hand_and_keeps_the_others_counting(router_lab: Lab) -> None:
    init(router_lab)
    assert_redirected(router_lab, 5000, ("203.0.113.27", 5000))  # the fallback's
    router_lab.exec("router", ["nft", "delete", "element", "inet", "egress_router", "tcp4", "{", "8080", "}"])
    done = router_lab.run_router(seed_env("init", EGRESS_ROUTER_DEBUG="1"))
    assert done.returncode == 0, done.stderr
    # Only the difference, as one batch: the rest of the table (its counts) is untouched.
    assert "nft: add element inet egress_router tcp4 { 8080 : 203.0.113.26 . 80 }" in done.stderr
    assert "route=netlink batch" in done.stderr and "delete table" not in done.stderr
    assert fallback_packets(router_lab.nft_table()) == 1
    assert_redirected(router_lab, 8080, ("203.0.113.26", 80))


def test_a_restart_replaces_a_table_someone_added_a_rule_to(router_lab: Lab) -> None:
    init(router_lab)
    rule = ["tcp", "dport", "8080", "drop"]
    router_lab.exec("router", ["nft", "insert", "rule", "inet", "egress_router", "prerouting", *rule])
    assert not router_lab.connect(8080, timeout=1).ok
    done = router_lab.run_router(seed_env("init", EGRESS_ROUTER_DEBUG="1"))
    assert done.returncode == 0, done.stderr
    assert "route=nft -f" in done.stderr
    assert "tcp dport 8080 drop" not in (router_lab.nft_table() or "")
    assert_redirected(router_lab, 8080, ("203.0.113.26", 80))


def test_a_new_configuration_replaces_the_old_one_exactly(router_lab: Lab) -> None:
    init(router_lab)
    init(router_lab, EGRESS_DESTINATION="80 tcp 203.0.113.26\n7000 tcp 203.0.113.25\n")
    assert_redirected(router_lab, 80, ("203.0.113.26", 80))
    assert_redirected(router_lab, 7000, ("203.0.113.25", 7000))
    # Old mappings and the old fallback are gone: without a fallback, refused.
    assert router_lab.connect(8080).error == "refused"
    assert router_lab.connect(5000).error == "refused"
    assert "203.0.113.27" not in comparable(router_lab.nft_table())


def test_a_new_source_address_replaces_the_old_one(router_lab: Lab) -> None:
    init(router_lab)
    init(router_lab, EGRESS_SOURCE="192.0.2.98/24")
    assert macvlan_addresses(router_lab) == ["192.0.2.98/24"]
    probe = router_lab.connect(80)
    assert (probe.ok, probe.source) == (True, "192.0.2.98")


# -- bad input and dry runs --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "variable", "where"),
    [
        (
            {"EGRESS_DESTINATION": "80 tcp 203.0.113.25\n8080 tcp 999.1.2.3 80\n"},
            "EGRESS_DESTINATION",
            "line 2",
        ),
        (
            {"EGRESS_DESTINATION": "203.0.113.27\n80 tcp 203.0.113.25\n"},
            "EGRESS_DESTINATION",
            "line 2",
        ),
        (
            {"EGRESS_DESTINATION": "80 tcp 203.0.113.25\n80 TCP 203.0.113.26\n"},
            "EGRESS_DESTINATION",
            "line 2",
        ),
        ({"EGRESS_DESTINATION": "70000 tcp 203.0.113.25\n"}, "EGRESS_DESTINATION", "line 1"),
        ({"EGRESS_SOURCE": "192.0.2.99/33"}, "EGRESS_SOURCE", ""),
        ({"EGRESS_ROUTER_MODE": "redirect"}, "EGRESS_ROUTER_MODE", ""),
    ],
    ids=["bad-address", "fallback-not-last", "port-twice", "port-range", "bad-prefix", "bad-mode"],
)
def test_bad_input_exits_2_naming_the_problem_and_the_running_rules_stay(
    router_lab: Lab, overrides: dict[str, str], variable: str, where: str
) -> None:
    init(router_lab)
    before = comparable(router_lab.nft_table())
    done = router_lab.run_router(seed_env("init", **overrides))
    assert done.returncode == 2, done.stderr
    assert variable in done.stderr and where in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert comparable(router_lab.nft_table()) == before
    assert macvlan_addresses(router_lab) == [f"{SOURCE}/24"]
    assert_redirected(router_lab, 8080, ("203.0.113.26", 80))


def test_unit_test_mode_prints_a_valid_script_and_changes_nothing(router_lab: Lab) -> None:
    done = router_lab.run_router(seed_env("unit-test"))
    assert done.returncode == 0, done.stderr
    script = [line for line in done.stdout.splitlines() if not line.startswith("#")]
    assert any("203.0.113.26 . 443" in line for line in script), done.stdout
    check = router_lab.exec("router", ["nft", "-c", "-f", "-"], check=False, input=done.stdout)
    assert check.returncode == 0, check.stderr
    assert router_lab.nft_table() is None
    assert macvlan_addresses(router_lab) == []
    assert router_lab.sysctl("router", "net/ipv4/ip_forward") == "0"
    assert router_lab.connect(80, timeout=1).ok is False


# -- the environment of the pod ------------------------------------------------------------------


def test_a_missing_macvlan_is_explained_and_nothing_is_applied(router_lab: Lab) -> None:
    router_lab.delete_link("router", "macvlan0")
    routes = router_lab.exec("router", ["ip", "route", "show"]).stdout
    done = router_lab.run_router(seed_env())
    assert done.returncode == 1, done.stderr
    assert "macvlan0" in done.stderr and "assign-macvlan" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert router_lab.nft_table() is None
    assert router_lab.sysctl("router", "net/ipv4/ip_forward") == "0"
    # The pod's own routes (its default route on eth0, as its CNI set it) are untouched.
    assert router_lab.exec("router", ["ip", "route", "show"]).stdout == routes
    assert router_lab.exec("router", ["ip", "rule"]).stdout.count("lookup") == 3  # the kernel's own


def test_rules_can_come_from_a_file(router_lab: Lab, tmp_path: Path) -> None:
    rules = tmp_path / "destination"
    rules.write_text("80 tcp 203.0.113.26\n# a comment\n\n8443 tcp 203.0.113.26 443\n")
    env = seed_env("init", EGRESS_DESTINATION_FILE=str(rules))
    del env["EGRESS_DESTINATION"]
    done = router_lab.run_router(env)
    assert done.returncode == 0, done.stderr
    assert_redirected(router_lab, 80, ("203.0.113.26", 80))
    assert_redirected(router_lab, 8443, ("203.0.113.26", 443))
    assert router_lab.connect(8080).error == "refused"


def test_setting_both_the_variable_and_the_file_is_an_error(
    router_lab: Lab, tmp_path: Path
) -> None:
    rules = tmp_path / "destination"
    rules.write_text("80 tcp 203.0.113.26\n")
    done = router_lab.run_router(seed_env("init", EGRESS_DESTINATION_FILE=str(rules)))
    assert done.returncode == 2
    assert "EGRESS_DESTINATION_FILE" in done.stderr
    assert router_lab.nft_table() is None


def test_the_router_switches_forwarding_on_itself(router_lab: Lab) -> None:
    assert router_lab.sysctl("router", "net/ipv4/ip_forward") == "0"
    init(router_lab)
    assert router_lab.sysctl("router", "net/ipv4/ip_forward") == "1"


def test_the_gateway_learns_the_new_owner_of_the_source_address_at_once(router_lab: Lab) -> None:
    # The gateway still believes the address belongs to a previous pod's MAC.
    router_lab.exec(
        "gw", ["ip", "neigh", "replace", SOURCE, "lladdr", WRONG_MAC, "dev", "lan0", "nud", "stale"]
    )
    init(router_lab)
    entry = router_lab.exec("gw", ["ip", "neigh", "show", SOURCE, "dev", "lan0"]).stdout
    assert router_lab.mac("router", "macvlan0") in entry, entry
    assert WRONG_MAC not in entry


def test_a_source_without_prefix_reaches_only_the_gateway_yet_traffic_flows(
    router_lab: Lab,
) -> None:
    init(router_lab, EGRESS_SOURCE=SOURCE)
    assert macvlan_addresses(router_lab) == [f"{SOURCE}/32"]
    routes = router_lab.exec("router", ["ip", "route", "show", "table", "all", "dev", "macvlan0"]).stdout
    assert re.search(rf"^{re.escape(A.GATEWAY)} table 2430 .*scope link", routes, re.MULTILINE), routes
    assert "192.0.2.0/24" not in routes
    assert_redirected(router_lab, 80, ("203.0.113.25", 80))


# -- legacy mode -------------------------------------------------------------------------------


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_legacy_mode_stays_up_and_leaves_promptly_on_a_signal(
    router_lab: Lab, stop: signal.Signals
) -> None:
    router = router_lab.start_router(seed_env("legacy", EGRESS_ROUTER_HTTP_PORT="0"))
    deadline = time.monotonic() + 10
    while not router_lab.connect(80, timeout=0.5).ok and time.monotonic() < deadline:
        assert router.poll() is None, router.communicate()[1]
        time.sleep(0.05)
    assert_redirected(router_lab, 80, ("203.0.113.25", 80))
    time.sleep(0.3)
    assert router.poll() is None, "legacy mode must stay"
    started = time.monotonic()
    router.send_signal(stop)
    _, err = router.communicate(timeout=5)
    assert router.returncode == 0, err
    assert time.monotonic() - started < 2.0
    assert "Traceback" not in err
