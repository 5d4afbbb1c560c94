"""The reconcile step against in-memory kernels: repeatable, convergent, all-or-nothing."""

from __future__ import annotations

import ipaddress

import pytest

from egress_router.config import load_environment
from egress_router.errors import ApplyError, SetupError
from egress_router.log import Log
from egress_router.neighbours.fake import RecordingAnnouncer
from egress_router.network.fake import FakeLink, FakeNet, pod_network
from egress_router.network.state import MAIN_TABLE, Address, Route, Rule
from egress_router.nft.fake import FakeNft
from egress_router.nft.table import BATCH, SCRIPT
from egress_router.reconcile import Router
from egress_router.schema import FWMARK, ROUTE_TABLE

SEED = "80   tcp 203.0.113.25\n8080 tcp 203.0.113.26 80\n8443 tcp 203.0.113.26 443\n203.0.113.27\n"


def config(destinations: str = SEED, **env: str):  # type: ignore[no-untyped-def]
    base = {
        "EGRESS_SOURCE": "192.0.2.99/24",
        "EGRESS_GATEWAY": "192.0.2.1",
        "EGRESS_DESTINATION": destinations,
        "EGRESS_ROUTER_MODE": "init",
    }
    return load_environment({**base, **env})


def pod() -> FakeNet:
    """A pod as a Calico-like CNI leaves it: eth0 with its default route, macvlan0 down."""
    eth0 = FakeLink(up=True, mtu=1450, addresses=[Address(ipaddress.ip_interface("198.51.100.2/32"), False)])
    return FakeNet(links={"macvlan0": FakeLink(), "eth0": eth0}, routes=pod_network())


@pytest.fixture
def router() -> Router:
    return Router(nft=FakeNft(), net=pod(), announcer=RecordingAnnouncer(), log=Log(stream=_Null()))


def ours(net: FakeNet) -> set[Route]:
    return {r for r in net.routes if r.table == ROUTE_TABLE}


SEED_ROUTES = {
    Route(4, ROUTE_TABLE, "192.0.2.0/24", None, "macvlan0", "link", 0, "192.0.2.99"),
    Route(4, ROUTE_TABLE, "default", "192.0.2.1", "macvlan0", "global", 0, "192.0.2.99"),
}


class _Null:
    def write(self, _: str) -> None: ...
    def flush(self) -> None: ...


def tcp4(router: Router) -> dict[str, str]:
    assert isinstance(router.nft, FakeNft)
    return router.nft.elements("inet", "egress_router", "tcp4")


def test_first_reconcile_sets_everything_up(router: Router) -> None:
    outcome = router.apply(config())
    net = router.net
    assert isinstance(net, FakeNet)
    link = net.links["macvlan0"]
    assert link.up and link.addresses == [Address(ipaddress.ip_interface("192.0.2.99/24"))]
    # Only redirected connections (marked) leave through macvlan0, by the router's own table;
    # the pod's main table keeps its routes and gets no subnet route through macvlan0.
    assert ours(net) == SEED_ROUTES
    assert net.rules == [Rule(4, 2430, ROUTE_TABLE, fwmark=FWMARK)]
    assert [r for r in net.routes if r.table == MAIN_TABLE] == pod_network()
    assert net.sysctls["net/ipv4/ip_forward"] == "1"
    assert net.sysctls["net/ipv4/conf/macvlan0/rp_filter"] == "2"
    assert tcp4(router) == {"80": "203.0.113.25 . 80", "8080": "203.0.113.26 . 80", "8443": "203.0.113.26 . 443"}
    assert outcome.full_table and outcome.announced == ("192.0.2.99",)


def test_second_reconcile_with_the_same_config_changes_nothing(router: Router) -> None:
    router.apply(config())
    assert isinstance(router.nft, FakeNft)
    applied = len(router.nft.scripts)
    outcome = router.apply(config())
    assert len(router.nft.scripts) == applied and outcome.nft_script == ""
    assert outcome.announced == ()  # the address was already there: nothing to announce


def test_new_config_converges_exactly_with_element_changes(router: Router) -> None:
    router.apply(config())
    outcome = router.apply(config("80 tcp 203.0.113.26\n9000 tcp 203.0.113.25 90\n203.0.113.27\n"))
    assert not outcome.full_table
    assert tcp4(router) == {"80": "203.0.113.26 . 80", "9000": "203.0.113.25 . 90"}


def test_a_new_process_replaces_a_table_of_another_structure_whole(router: Router) -> None:
    router.apply(config())
    fresh = Router(nft=router.nft, net=router.net, announcer=RecordingAnnouncer(), log=router.log)
    outcome = fresh.apply(config("81 tcp 203.0.113.25\n"))  # no fallback: other chains
    assert outcome.full_table and outcome.route == SCRIPT
    assert tcp4(fresh) == {"81": "203.0.113.25 . 81"}


def test_a_restart_that_finds_its_own_structure_changes_only_the_elements(router: Router) -> None:
    router.apply(config())
    nft = router.nft
    assert isinstance(nft, FakeNft)
    listed = nft.listings.copy()
    fresh = Router(nft=nft, net=router.net, announcer=RecordingAnnouncer(), log=router.log)
    outcome = fresh.apply(config(SEED.replace("8443 tcp 203.0.113.26 443", "9000 tcp 203.0.113.25 90")))
    assert not outcome.full_table and outcome.route == BATCH
    assert outcome.nft_script == (
        "delete element inet egress_router tcp4 { 8443 }\n"
        "add element inet egress_router tcp4 { 9000 : 203.0.113.25 . 90 }\n"
    )
    assert nft.listings == listed, "no listing: the batch's inverse is the way back"
    assert tcp4(fresh) == {"80": "203.0.113.25 . 80", "8080": "203.0.113.26 . 80", "9000": "203.0.113.25 . 90"}
    again = Router(nft=nft, net=router.net, announcer=RecordingAnnouncer(), log=router.log)
    assert not again.apply(config(SEED.replace("8443 tcp 203.0.113.26 443", "9000 tcp 203.0.113.25 90"))).transaction


def test_a_restart_that_fails_later_puts_the_elements_it_found_back(router: Router) -> None:
    router.apply(config())
    assert isinstance(router.net, FakeNet)
    found = tcp4(router)
    fresh = Router(nft=router.nft, net=router.net, announcer=RecordingAnnouncer(), log=router.log)
    router.net.fail_on = "route replace"
    with pytest.raises(ApplyError):
        fresh.apply(config(SEED.replace("8443", "9443"), EGRESS_SOURCE="192.0.2.98/24"))
    assert tcp4(fresh) == found


def test_after_drift_a_table_with_the_right_tag_is_still_replaced_whole(router: Router) -> None:
    router.apply(config())
    router.forget()  # what the daemon does when it finds the table altered
    outcome = router.apply(config())
    assert outcome.full_table and outcome.route == SCRIPT


def test_missing_interface_fails_before_anything_is_applied() -> None:
    nft = FakeNft()
    router = Router(nft=nft, net=FakeNet(links={"eth0": FakeLink(up=True)}), announcer=RecordingAnnouncer())
    with pytest.raises(SetupError) as caught:
        router.apply(config())
    assert "macvlan0 does not exist" in str(caught.value)
    assert 'assign-macvlan: "true"' in str(caught.value)
    assert nft.tables == {}


def test_refused_transaction_keeps_the_running_rules(router: Router) -> None:
    router.apply(config())
    assert isinstance(router.nft, FakeNft)
    router.nft.fail_with = "Could not process rule: No such file or directory"
    with pytest.raises(ApplyError):
        router.apply(config("81 tcp 203.0.113.25\n"))
    assert "80" in tcp4(router)
    # The router did not record the refused state: the next attempt retries it.
    router.apply(config("81 tcp 203.0.113.25\n"))
    assert tcp4(router) == {"81": "203.0.113.25 . 81"}


def test_stale_addresses_are_removed(router: Router) -> None:
    assert isinstance(router.net, FakeNet)
    router.net.links["macvlan0"].addresses.append(Address(ipaddress.ip_interface("192.0.2.50/24"), False))
    router.apply(config())
    assert router.net.links["macvlan0"].addresses == [Address(ipaddress.ip_interface("192.0.2.99/24"))]


def test_an_address_without_noprefixroute_is_added_again_with_it_and_its_subnet_route_goes(router: Router) -> None:
    # As an older router left it: the kernel's subnet route in the main table sends replies to
    # the LAN's hosts (the node among them) out of macvlan0.
    net = router.net
    assert isinstance(net, FakeNet)
    net.apply([])  # nothing yet
    link = net.links["macvlan0"]
    link.up = True
    link.addresses.append(Address(ipaddress.ip_interface("192.0.2.99/24"), False))
    net.routes.append(Route(4, MAIN_TABLE, "192.0.2.0/24", None, "macvlan0", "link", 0, "192.0.2.99"))
    net.routes.append(Route(4, MAIN_TABLE, "default", "192.0.2.1", "macvlan0", "global", 10))
    router.apply(config())
    assert link.addresses == [Address(ipaddress.ip_interface("192.0.2.99/24"))]
    assert [r for r in net.routes if r.table == MAIN_TABLE] == pod_network()
    assert ours(net) == SEED_ROUTES


def test_a_changed_gateway_is_probed_and_a_silent_one_named() -> None:
    from egress_router.neighbours import NeighbourReport

    announcer = RecordingAnnouncer()
    router = Router(nft=FakeNft(), net=pod(), announcer=announcer, log=Log(stream=_Null()))
    router.apply(config())
    again = Router(nft=router.nft, net=router.net, announcer=announcer, log=router.log)
    again.apply(config())
    assert len(announcer.probes) == 1  # same address, same gateway: the LAN knows them
    announcer.report = NeighbourReport(answered=())
    outcome = Router(nft=router.nft, net=router.net, announcer=announcer, log=router.log).apply(
        config(EGRESS_GATEWAY="192.0.2.254")
    )
    assert announcer.probes[-1][1][1] == ipaddress.ip_address("192.0.2.254")
    assert any("the gateway 192.0.2.254 did not answer ARP" in w for w in outcome.warnings)


def test_read_only_sysctl_that_is_already_right_is_fine(router: Router) -> None:
    assert isinstance(router.net, FakeNet)
    router.net.read_only_sysctls = True
    with pytest.raises(ApplyError, match="net.ipv4.ip_forward"):
        router.apply(config())
    router.net.sysctls["net/ipv4/ip_forward"] = "1"
    with pytest.raises(ApplyError, match="net.ipv4.conf.macvlan0.rp_filter=2"):
        router.apply(config())
    router.net.sysctls["net/ipv4/conf/macvlan0/rp_filter"] = "2"
    router.apply(config())


def test_proxy_modes_have_no_nat_and_send_the_pods_own_connections_out(router: Router, tmp_path) -> None:  # type: ignore[no-untyped-def]
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search svc.cluster.local\nnameserver 198.51.100.53\noptions ndots:5\n")
    router.resolv_conf = str(resolv)
    router.apply(config(EGRESS_ROUTER_MODE="http-proxy"))
    assert isinstance(router.nft, FakeNft) and isinstance(router.net, FakeNet)
    (table,) = router.nft.tables.values()
    assert table.maps == {} and "dnat" not in table.skeleton and "snat" not in table.skeleton
    assert [str(r) for r in router.net.rules] == [
        "priority 2431 from 198.51.100.2/32 lookup main",  # replies to the proxy's clients: the pod network
        "priority 2432 to 198.51.100.53/32 lookup main",  # the pod's DNS lookups: the pod network
        "priority 2433 iif lo lookup 2430",  # the proxy's own connections: the LAN
    ]
    assert "net/ipv4/ip_forward" not in router.net.sysctls  # a proxy forwards nothing


def test_failure_part_way_restores_the_previous_state(router: Router) -> None:
    net, nft = router.net, router.nft
    assert isinstance(net, FakeNet) and isinstance(nft, FakeNft)
    router.apply(config())
    before_table = nft.list_table("inet", "egress_router")
    before = (list(net.links["macvlan0"].addresses), sorted(net.routes), list(net.rules), dict(net.sysctls))
    net.fail_on = "route replace default"
    with pytest.raises(ApplyError, match="failed to route replace default via 192.0.2.1 dev macvlan0"):
        router.apply(config("81 tcp 203.0.113.25\n", EGRESS_SOURCE="192.0.2.98/24"))
    # The new address and its subnet route were in before the refusal; both are gone again.
    assert any("192.0.2.98" in str(step) for step in net.taken[-6:])
    assert nft.list_table("inet", "egress_router") == before_table
    assert (list(net.links["macvlan0"].addresses), sorted(net.routes), list(net.rules), dict(net.sysctls)) == before
    assert tcp4(router) == {"80": "203.0.113.25 . 80", "8080": "203.0.113.26 . 80", "8443": "203.0.113.26 . 443"}


def test_failure_on_a_fresh_kernel_leaves_no_table_and_forwarding_off() -> None:
    net = pod()
    net.sysctls["net/ipv4/ip_forward"] = "0"
    nft = FakeNft()
    router = Router(nft=nft, net=net, announcer=RecordingAnnouncer(), log=Log(stream=_Null()))
    net.fail_on = "sysctl net.ipv4.ip_forward"  # the last step
    with pytest.raises(ApplyError):
        router.apply(config())
    assert nft.tables == {}
    assert net.sysctls["net/ipv4/ip_forward"] == "0"
    assert not net.links["macvlan0"].up and net.links["macvlan0"].addresses == []
    assert ours(net) == set() and net.rules == [] and net.routes == pod_network()


def test_a_new_process_restores_the_table_it_found(router: Router) -> None:
    router.apply(config())
    assert isinstance(router.net, FakeNet) and isinstance(router.nft, FakeNft)
    found = router.nft.list_table("inet", "egress_router")
    fresh = Router(nft=router.nft, net=router.net, announcer=RecordingAnnouncer(), log=router.log)
    router.net.fail_on = "route replace"
    with pytest.raises(ApplyError):
        fresh.apply(config("81 tcp 203.0.113.25\n", EGRESS_SOURCE="192.0.2.98/24"))
    assert router.nft.list_table("inet", "egress_router") == found


def test_gateway_that_does_not_answer_is_a_warning_with_its_address() -> None:
    from egress_router.neighbours import NeighbourReport

    announcer = RecordingAnnouncer(NeighbourReport(answered=()))
    router = Router(nft=FakeNft(), net=pod(), announcer=announcer, log=Log(stream=_Null()))
    outcome = router.apply(config())
    assert any("the gateway 192.0.2.1 did not answer ARP on macvlan0" in w for w in outcome.warnings)
    assert announcer.sent  # announced all the same


def test_another_holder_of_the_source_is_reported() -> None:
    from egress_router.neighbours import NeighbourReport

    announcer = RecordingAnnouncer(NeighbourReport(("192.0.2.1",), (("192.0.2.99", "02:aa:00:00:00:01"),)))
    router = Router(nft=FakeNft(), net=pod(), announcer=announcer, log=Log(stream=_Null()))
    outcome = router.apply(config())
    assert outcome.conflicts == ("02:aa:00:00:00:01",)
    assert any("another host (02:aa:00:00:00:01) answers for 192.0.2.99" in w for w in outcome.warnings)


def test_a_link_without_carrier_is_reported() -> None:
    net = pod()
    net.links["macvlan0"].carrier = False
    router = Router(nft=FakeNft(), net=net, announcer=RecordingAnnouncer(), log=Log(stream=_Null()))
    outcome = router.apply(config())
    assert any("macvlan0 has no carrier" in w for w in outcome.warnings)


def test_an_address_that_was_there_on_a_down_link_is_announced() -> None:
    net = pod()
    net.links["macvlan0"].addresses.append(Address(ipaddress.ip_interface("192.0.2.99/24")))
    announcer = RecordingAnnouncer()
    router = Router(nft=FakeNft(), net=net, announcer=announcer, log=Log(stream=_Null()))
    router.apply(config())
    assert announcer.sent and announcer.sent[0][2] == (ipaddress.ip_address("192.0.2.99"),)


def test_a_reload_of_the_rules_alone_changes_only_map_elements(router: Router) -> None:
    assert isinstance(router.net, FakeNet)
    router.apply(config())
    taken = len(router.net.taken)
    outcome = router.apply(config("81 tcp 203.0.113.25\n203.0.113.27\n"), fresh=False)
    assert len(router.net.taken) == taken and not outcome.full_table
    assert outcome.nft_script.startswith("delete element inet egress_router tcp4")
    router.forget()  # after drift: everything again, the table whole
    outcome = router.apply(config("81 tcp 203.0.113.25\n203.0.113.27\n"))
    assert outcome.full_table


def test_the_debug_log_of_a_restart_shows_the_difference_applied(router: Router) -> None:
    import io

    router.apply(config())
    stream = io.StringIO()
    fresh = Router(nft=router.nft, net=router.net, announcer=RecordingAnnouncer(), log=Log(debug=True, stream=stream))
    fresh.apply(config(SEED.replace("8443 tcp 203.0.113.26 443", "8443 tcp 203.0.113.25 443")))
    lines = stream.getvalue().splitlines()
    assert "egress-router: debug: nft: delete element inet egress_router tcp4 { 8443 }" in lines
    assert "egress-router: debug: nft: add element inet egress_router tcp4 { 8443 : 203.0.113.25 . 443 }" in lines
    assert not [line for line in lines if "nft: " in line and "element" not in line], "only the difference"
    assert any("route=netlink batch" in line for line in lines)
