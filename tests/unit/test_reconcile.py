"""The reconcile step against in-memory kernels: repeatable, convergent, all-or-nothing."""

from __future__ import annotations

import ipaddress

import pytest

from egress_router.config import load_environment
from egress_router.errors import ApplyError, SetupError
from egress_router.log import Log
from egress_router.neighbours.fake import RecordingAnnouncer
from egress_router.network.fake import FakeLink, FakeNet
from egress_router.nft.fake import FakeNft
from egress_router.nft.table import BATCH, SCRIPT
from egress_router.reconcile import Router

SEED = "80   tcp 203.0.113.25\n8080 tcp 203.0.113.26 80\n8443 tcp 203.0.113.26 443\n203.0.113.27\n"


def config(destinations: str = SEED, **env: str):  # type: ignore[no-untyped-def]
    base = {
        "EGRESS_SOURCE": "192.0.2.99/24",
        "EGRESS_GATEWAY": "192.0.2.1",
        "EGRESS_DESTINATION": destinations,
        "EGRESS_ROUTER_MODE": "init",
    }
    return load_environment({**base, **env})


@pytest.fixture
def router() -> Router:
    net = FakeNet(links={"macvlan0": FakeLink()})
    return Router(nft=FakeNft(), net=net, announcer=RecordingAnnouncer(), log=Log(stream=_Null()))


class _Null:
    def write(self, _: str) -> None: ...
    def flush(self) -> None: ...


def tcp4(router: Router) -> dict[str, str]:
    assert isinstance(router.nft, FakeNft)
    return router.nft.elements("inet", "egress_router", "tcp4")


def test_first_reconcile_sets_everything_up(router: Router) -> None:
    outcome = router.reconcile(config())
    net = router.net
    assert isinstance(net, FakeNet)
    link = net.links["macvlan0"]
    assert link.up and link.addresses == [ipaddress.ip_interface("192.0.2.99/24")]
    assert str(net.routes[(4, "default")].via) == "192.0.2.1"
    assert net.sysctls["net/ipv4/ip_forward"] == "1"
    assert tcp4(router) == {"80": "203.0.113.25 . 80", "8080": "203.0.113.26 . 80", "8443": "203.0.113.26 . 443"}
    assert outcome.full_table and outcome.announced == ("192.0.2.99",)


def test_second_reconcile_with_the_same_config_changes_nothing(router: Router) -> None:
    router.reconcile(config())
    assert isinstance(router.nft, FakeNft)
    applied = len(router.nft.scripts)
    outcome = router.reconcile(config())
    assert len(router.nft.scripts) == applied and outcome.nft_script == ""
    assert outcome.announced == ()  # the address was already there: nothing to announce


def test_new_config_converges_exactly_with_element_changes(router: Router) -> None:
    router.reconcile(config())
    outcome = router.reconcile(config("80 tcp 203.0.113.26\n9000 tcp 203.0.113.25 90\n203.0.113.27\n"))
    assert not outcome.full_table
    assert tcp4(router) == {"80": "203.0.113.26 . 80", "9000": "203.0.113.25 . 90"}


def test_a_new_process_replaces_a_table_of_another_structure_whole(router: Router) -> None:
    router.reconcile(config())
    fresh = Router(nft=router.nft, net=router.net, announcer=RecordingAnnouncer(), log=router.log)
    outcome = fresh.reconcile(config("81 tcp 203.0.113.25\n"))  # no fallback: other chains
    assert outcome.full_table and outcome.route == SCRIPT
    assert tcp4(fresh) == {"81": "203.0.113.25 . 81"}


def test_a_restart_that_finds_its_own_structure_changes_only_the_elements(router: Router) -> None:
    router.reconcile(config())
    nft = router.nft
    assert isinstance(nft, FakeNft)
    listed = nft.listings.copy()
    fresh = Router(nft=nft, net=router.net, announcer=RecordingAnnouncer(), log=router.log)
    outcome = fresh.reconcile(config(SEED.replace("8443 tcp 203.0.113.26 443", "9000 tcp 203.0.113.25 90")))
    assert not outcome.full_table and outcome.route == BATCH
    assert outcome.nft_script == (
        "delete element inet egress_router tcp4 { 8443 }\n"
        "add element inet egress_router tcp4 { 9000 : 203.0.113.25 . 90 }\n"
    )
    assert nft.listings == listed, "no listing: the batch's inverse is the way back"
    assert tcp4(fresh) == {"80": "203.0.113.25 . 80", "8080": "203.0.113.26 . 80", "9000": "203.0.113.25 . 90"}
    again = Router(nft=nft, net=router.net, announcer=RecordingAnnouncer(), log=router.log)
    assert not again.reconcile(config(SEED.replace("8443 tcp 203.0.113.26 443", "9000 tcp 203.0.113.25 90"))).transaction


def test_a_restart_that_fails_later_puts_the_elements_it_found_back(router: Router) -> None:
    router.reconcile(config())
    assert isinstance(router.net, FakeNet)
    found = tcp4(router)
    fresh = Router(nft=router.nft, net=router.net, announcer=RecordingAnnouncer(), log=router.log)
    router.net.fail_configure = "boom"
    with pytest.raises(ApplyError):
        fresh.reconcile(config(SEED.replace("8443", "9443"), EGRESS_SOURCE="192.0.2.98/24"))
    assert tcp4(fresh) == found


def test_after_drift_a_table_with_the_right_tag_is_still_replaced_whole(router: Router) -> None:
    router.reconcile(config())
    router.forget()  # what the daemon does when it finds the table altered
    outcome = router.reconcile(config())
    assert outcome.full_table and outcome.route == SCRIPT


def test_missing_interface_fails_before_anything_is_applied() -> None:
    nft = FakeNft()
    router = Router(nft=nft, net=FakeNet(), announcer=RecordingAnnouncer())
    with pytest.raises(SetupError) as caught:
        router.reconcile(config())
    assert "macvlan0 does not exist" in str(caught.value)
    assert 'assign-macvlan: "true"' in str(caught.value)
    assert nft.tables == {}


def test_refused_transaction_keeps_the_running_rules(router: Router) -> None:
    router.reconcile(config())
    assert isinstance(router.nft, FakeNft)
    router.nft.fail_with = "Could not process rule: No such file or directory"
    with pytest.raises(ApplyError):
        router.reconcile(config("81 tcp 203.0.113.25\n"))
    assert "80" in tcp4(router)
    # The router did not record the refused state: the next attempt retries it.
    router.reconcile(config("81 tcp 203.0.113.25\n"))
    assert tcp4(router) == {"81": "203.0.113.25 . 81"}


def test_stale_addresses_are_removed(router: Router) -> None:
    assert isinstance(router.net, FakeNet)
    router.net.links["macvlan0"].addresses.append(ipaddress.ip_interface("192.0.2.50/24"))
    router.reconcile(config())
    assert router.net.links["macvlan0"].addresses == [ipaddress.ip_interface("192.0.2.99/24")]


def test_read_only_sysctl_that_is_already_right_is_fine(router: Router) -> None:
    assert isinstance(router.net, FakeNet)
    router.net.read_only_sysctls = True
    with pytest.raises(ApplyError, match="net.ipv4.ip_forward"):
        router.reconcile(config())
    router.net.sysctls["net/ipv4/ip_forward"] = "1"
    router.reconcile(config())


def test_proxy_modes_touch_no_nat_table(router: Router) -> None:
    router.reconcile(config(EGRESS_ROUTER_MODE="http-proxy"))
    assert isinstance(router.nft, FakeNft)
    assert router.nft.tables == {}


def test_failure_part_way_restores_the_previous_state(router: Router) -> None:
    net, nft = router.net, router.nft
    assert isinstance(net, FakeNet) and isinstance(nft, FakeNft)
    router.reconcile(config())
    before_table = nft.list_table("inet", "egress_router")
    before_link = list(net.links["macvlan0"].addresses)
    net.fail_configure = "RTNETLINK answers: Network is unreachable"
    with pytest.raises(ApplyError, match="Network is unreachable"):
        router.reconcile(config("81 tcp 203.0.113.25\n", EGRESS_SOURCE="192.0.2.98/24"))
    assert nft.list_table("inet", "egress_router") == before_table
    assert net.links["macvlan0"].addresses == before_link
    assert tcp4(router) == {"80": "203.0.113.25 . 80", "8080": "203.0.113.26 . 80", "8443": "203.0.113.26 . 443"}


def test_failure_on_a_fresh_kernel_leaves_no_table_and_forwarding_off() -> None:
    net = FakeNet(links={"macvlan0": FakeLink()}, sysctls={"net/ipv4/ip_forward": "0"})
    nft = FakeNft()
    router = Router(nft=nft, net=net, announcer=RecordingAnnouncer(), log=Log(stream=_Null()))
    net.fail_configure = "RTNETLINK answers: File exists"
    with pytest.raises(ApplyError):
        router.reconcile(config())
    assert nft.tables == {}
    assert net.sysctls["net/ipv4/ip_forward"] == "0"
    assert not net.links["macvlan0"].up and net.links["macvlan0"].addresses == []


def test_a_new_process_restores_the_table_it_found(router: Router) -> None:
    router.reconcile(config())
    assert isinstance(router.net, FakeNet) and isinstance(router.nft, FakeNft)
    found = router.nft.list_table("inet", "egress_router")
    fresh = Router(nft=router.nft, net=router.net, announcer=RecordingAnnouncer(), log=router.log)
    router.net.fail_configure = "boom"
    with pytest.raises(ApplyError):
        fresh.reconcile(config("81 tcp 203.0.113.25\n"))
    assert router.nft.list_table("inet", "egress_router") == found


def test_gateway_that_does_not_answer_is_a_warning_with_its_address() -> None:
    from egress_router.neighbours import NeighbourReport

    announcer = RecordingAnnouncer(NeighbourReport(answered=()))
    router = Router(nft=FakeNft(), net=FakeNet(links={"macvlan0": FakeLink()}), announcer=announcer, log=Log(stream=_Null()))
    outcome = router.reconcile(config())
    assert any("the gateway 192.0.2.1 did not answer ARP on macvlan0" in w for w in outcome.warnings)
    assert announcer.sent  # announced all the same


def test_another_holder_of_the_source_is_reported() -> None:
    from egress_router.neighbours import NeighbourReport

    announcer = RecordingAnnouncer(NeighbourReport(("192.0.2.1",), (("192.0.2.99", "02:aa:00:00:00:01"),)))
    router = Router(nft=FakeNft(), net=FakeNet(links={"macvlan0": FakeLink()}), announcer=announcer, log=Log(stream=_Null()))
    outcome = router.reconcile(config())
    assert outcome.conflicts == ("02:aa:00:00:00:01",)
    assert any("another host (02:aa:00:00:00:01) answers for 192.0.2.99" in w for w in outcome.warnings)


def test_a_link_without_carrier_is_reported() -> None:
    net = FakeNet(links={"macvlan0": FakeLink(carrier=False)})
    router = Router(nft=FakeNft(), net=net, announcer=RecordingAnnouncer(), log=Log(stream=_Null()))
    outcome = router.reconcile(config())
    assert any("macvlan0 has no carrier" in w for w in outcome.warnings)


def test_an_address_that_was_there_on_a_down_link_is_announced() -> None:
    link = FakeLink(up=False, addresses=[ipaddress.ip_interface("192.0.2.99/24")])
    announcer = RecordingAnnouncer()
    router = Router(nft=FakeNft(), net=FakeNet(links={"macvlan0": link}), announcer=announcer, log=Log(stream=_Null()))
    router.reconcile(config())
    assert announcer.sent and announcer.sent[0][2] == (ipaddress.ip_address("192.0.2.99"),)


def test_a_reload_of_the_rules_alone_changes_only_map_elements(router: Router) -> None:
    assert isinstance(router.net, FakeNet)
    router.reconcile(config())
    calls = router.net.calls
    outcome = router.reconcile(config("81 tcp 203.0.113.25\n203.0.113.27\n"))
    assert router.net.calls == calls and not outcome.full_table
    assert outcome.nft_script.startswith("delete element inet egress_router tcp4")
    router.forget()  # after drift: everything again, the table whole
    outcome = router.reconcile(config("81 tcp 203.0.113.25\n203.0.113.27\n"))
    assert router.net.calls == calls + 1 and outcome.full_table


def test_the_debug_log_of_a_restart_shows_the_difference_applied(router: Router) -> None:
    import io

    router.reconcile(config())
    stream = io.StringIO()
    fresh = Router(nft=router.nft, net=router.net, announcer=RecordingAnnouncer(), log=Log(debug=True, stream=stream))
    fresh.reconcile(config(SEED.replace("8443 tcp 203.0.113.26 443", "8443 tcp 203.0.113.25 443")))
    lines = stream.getvalue().splitlines()
    assert "egress-router: debug: nft: delete element inet egress_router tcp4 { 8443 }" in lines
    assert "egress-router: debug: nft: add element inet egress_router tcp4 { 8443 : 203.0.113.25 . 443 }" in lines
    assert not [line for line in lines if "nft: " in line and "element" not in line], "only the difference"
    assert any("route=netlink batch" in line for line in lines)
