"""HA without a kernel: the environment, keepalived's configuration, the gate's nft scripts,
the standby's plan and what the advert listener makes of a packet."""

from __future__ import annotations

import http.server
import io
import socket
import threading
from ipaddress import IPv4Address, IPv6Address

import pytest

from egress_router.cli import main
from egress_router.config import load_environment
from egress_router.errors import ConfigError
from egress_router.ha import gate
from egress_router.ha.controller import ANCHOR, Adverts, Peer6, active_plan, standby_plan
from egress_router.ha.keepalived import parse_fifo_line, render
from egress_router.ha.settings import HaConfig, load_ha
from egress_router.log import Log
from egress_router.plan import build_plan

ENV = {
    "EGRESS_SOURCE": "192.0.2.99/24,2001:db8:1::99/64",
    "EGRESS_GATEWAY": "192.0.2.1,2001:db8:1::1",
    "EGRESS_DESTINATION": "80 tcp 203.0.113.25\n",
    "EGRESS_ROUTER_MODE": "legacy",
}
HA = {**ENV, "EGRESS_ROUTER_HA": "vrrp", "EGRESS_ROUTER_VRRP_ID": "51"}


def config():  # type: ignore[no-untyped-def]
    return load_environment(ENV)


def test_the_ha_variables_parse() -> None:
    ha = load_ha({**HA, "EGRESS_ROUTER_VRRP_PEERS": "198.51.100.2, 198.51.100.66"}, config())
    assert ha == HaConfig(51, (IPv4Address("198.51.100.2"), IPv4Address("198.51.100.66")))
    assert ha.instance == "egress_router_51"


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        ({"EGRESS_ROUTER_HA": "carp"}, "EGRESS_ROUTER_HA: must be vrrp, not 'carp'"),
        ({"EGRESS_ROUTER_VRRP_ID": "0"}, "EGRESS_ROUTER_VRRP_ID: must be from 1 to 255, not 0"),
        ({"EGRESS_ROUTER_VRRP_ID": "x1"}, "EGRESS_ROUTER_VRRP_ID: must be a number from 1 to 255, not 'x1'"),
        ({"EGRESS_ROUTER_VRRP_ID": ""}, "EGRESS_ROUTER_VRRP_ID: is not set"),
        ({"EGRESS_ROUTER_VRRP_PEERS": "2001:db8::1"}, "EGRESS_ROUTER_VRRP_PEERS: must be IPv4 addresses"),
        ({"EGRESS_ROUTER_VRRP_PEERS": "198.51.100.2,198.51.100.2"}, "EGRESS_ROUTER_VRRP_PEERS: names 198.51.100.2 twice"),
        ({"EGRESS_ROUTER_VRRP_PEERS": "peer-a"}, "EGRESS_ROUTER_VRRP_PEERS: is not an IPv4 address: 'peer-a'"),
        ({"EGRESS_ROUTER_MODE": "init"}, "EGRESS_ROUTER_HA: needs EGRESS_ROUTER_MODE=legacy, not init"),
    ],
)
def test_a_wrong_ha_variable_is_one_line_and_exit_2(changes, line, capsys) -> None:  # type: ignore[no-untyped-def]
    env = {**HA, **changes}
    assert main([], env) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and line in err[0], err
    assert main(["validate"], env) == 2


def test_every_ha_problem_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        load_ha({**HA, "EGRESS_ROUTER_HA": "x", "EGRESS_ROUTER_VRRP_ID": "300"}, config())
    assert caught.value.count == 2


def test_keepalived_elects_and_the_router_holds() -> None:
    text = render(config(), HaConfig(51), IPv4Address("198.51.100.2"), "/run/x/state.fifo")
    lines = [line.strip() for line in text.splitlines()]
    for expected in ("vrrp_version 3", "notify_fifo /run/x/state.fifo", "state BACKUP", "interface macvlan0",
                     "virtual_router_id 51", "advert_int 0.1", "nopreempt", "mcast_src_ip 198.51.100.2"):
        assert expected in lines, expected
    # keepalived's one address is a placeholder on lo: never the reserved address.
    assert "192.0.2.99" not in text and "192.0.0.8/32 dev lo scope host" in lines
    assert "unicast_peer {" not in lines


def test_unicast_peers_leave_out_the_replica_itself() -> None:
    ha = HaConfig(7, (IPv4Address("198.51.100.2"), IPv4Address("198.51.100.66")))
    text = render(config(), ha, IPv4Address("198.51.100.2"), "/f")
    lines = [line.strip() for line in text.splitlines()]
    assert "unicast_src_ip 198.51.100.2" in lines and "mcast_src_ip 198.51.100.2" not in lines
    # Over the pod network, the egress interface tracked: its loss is a fault.
    assert "interface eth0" in lines and lines[lines.index("track_interface {") + 1] == "macvlan0"
    peers = lines[lines.index("unicast_peer {") + 1]
    assert peers == "198.51.100.66"


def test_fifo_lines() -> None:
    assert parse_fifo_line('INSTANCE "egress_router_51" MASTER 100') == ("egress_router_51", "MASTER")
    assert parse_fifo_line('GROUP "g" BACKUP 0') is None
    assert parse_fifo_line("") is None


def test_the_gate_covers_both_families_and_the_anchor() -> None:
    script = gate.table_script(config())
    assert 'iifname "macvlan0" iifname != @alive ip daddr 192.0.2.99 drop' in script
    assert 'iifname "macvlan0" iifname != @alive ip6 daddr 2001:db8:1::99 drop' in script
    assert 'iifname "macvlan0" iifname != @alive arp daddr ip 192.0.2.99 drop' in script
    assert 'oifname "macvlan0" oifname != @alive ip6 saddr 2001:db8:1::99 icmpv6 type nd-neighbor-advert drop' in script
    assert 'arp daddr ip 192.0.0.8 drop' in script
    assert 'ip protocol vrrp notrack' in script
    alive = gate.alive_script(config())
    assert alive.count("flush set") == 2 and alive.count('{ "macvlan0" timeout 1000ms }') == 2


def test_the_relay_skips_the_health_port_and_is_marked() -> None:
    relay = gate.relay_script(config(), IPv4Address("198.51.100.66"))
    assert relay.startswith("flush chain inet egress_router_ha relay\n")
    assert "tcp dport != 9090" in relay and "ct mark set 0x2431" in relay and "dnat ip to 198.51.100.66" in relay
    assert gate.relay_script(config(), None) == "flush chain inet egress_router_ha relay\n"
    # IPv6 too, to the active's IPv6 pod address, once it is known; never without an active.
    both = gate.relay_script(config(), IPv4Address("198.51.100.66"), IPv6Address("2001:db8:3:b::2"))
    assert "meta nfproto ipv4" in both and "meta nfproto ipv6" in both and "dnat ip6 to 2001:db8:3:b::2" in both
    assert "nfproto ipv6" not in gate.relay_script(config(), None, IPv6Address("2001:db8:3:b::2"))


def test_a_closed_gate_drops_what_would_leave_by_the_egress_interface() -> None:
    script = gate.table_script(config())
    assert "type filter hook forward priority filter - 10" in script
    assert 'iifname "eth0" oifname "macvlan0" oifname != @alive ct state new drop' in script


def test_the_standby_learns_the_actives_ipv6_pod_address_from_the_active() -> None:
    answers = {"/ha/pod-ipv6": b"2001:db8:3:a::2\n"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = answers.get(self.path)
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    peer = Peer6(server.server_address[1], Log(stream=io.StringIO()))
    try:
        assert peer._ask(IPv4Address("127.0.0.1")) == IPv6Address("2001:db8:3:a::2")
        answers["/ha/pod-ipv6"] = b"fe80::1\n"  # link-local: no pod address
        assert peer._ask(IPv4Address("127.0.0.1")) is None
        answers.clear()
        assert peer._ask(IPv4Address("127.0.0.1")) is None
        assert peer.lookup(None) is None and peer.lookup(IPv4Address("127.0.0.1")) is None
        assert peer.wanted == IPv4Address("127.0.0.1")
        peer.known[IPv4Address("127.0.0.1")] = IPv6Address("2001:db8:3:a::2")
        assert peer.lookup(IPv4Address("127.0.0.1")) == IPv6Address("2001:db8:3:a::2")
        # Another active: asked anew, the old answer forgotten (a pod address may be reused).
        assert peer.lookup(IPv4Address("127.0.0.2")) is None and peer.known == {}
    finally:
        server.shutdown()
        server.server_close()


def test_the_router_table_leaves_relayed_connections_on_the_pod_network() -> None:
    body = build_plan(config()).table.body
    assert "ct mark != 0x2431 meta mark set 0x2430" in body
    assert 'iifname "eth0" oifname "eth0" ct status dnat ct mark 0x2431 accept' in body


def test_a_standby_holds_only_the_anchor_and_announces_nothing() -> None:
    plan = build_plan(config())
    standby = standby_plan(plan).network
    assert standby.addresses == (ANCHOR,)
    assert all(route.source is None for route in standby.routes)
    assert standby.probes == ()
    assert standby.rules == plan.network.rules and standby.sysctls == plan.network.sysctls
    active = active_plan(plan).network
    assert active.addresses == (*plan.network.addresses, ANCHOR)
    assert active.routes == plan.network.routes and active.probes == plan.network.probes


def advert(vrid: int, priority: int, address: str = "192.0.0.8") -> bytes:
    ip_header = bytes([0x45]) + bytes(19)
    return ip_header + bytes([0x31, vrid, priority, 1, 0, 10, 0, 0]) + socket.inet_aton(address)


def test_the_listener_learns_the_active_from_the_adverts(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    woken = []
    monkeypatch.setattr("egress_router.ha.controller._wake", lambda: woken.append(1))
    listener = Adverts(51, IPv4Address("198.51.100.2"), Log())  # the listener's parsing, without its raw socket
    listener.heard(advert(51, 100), "198.51.100.66")
    assert listener.current() == IPv4Address("198.51.100.66") and woken == [1]
    listener.heard(advert(51, 100), "198.51.100.2")  # our own
    listener.heard(advert(52, 100), "198.51.100.9")  # another VRID
    assert listener.current() == IPv4Address("198.51.100.66") and woken == [1]
    listener.heard(advert(51, 0), "198.51.100.66")  # priority 0: it lets go
    assert listener.current() is None and woken == [1, 1]
    assert listener.collisions == 0
    listener.heard(advert(51, 100, "192.0.2.50"), "192.0.2.7")  # another VRRP router, our VRID
    assert listener.collisions == 1 and listener.current() is None


def test_a_takeover_and_a_release_apply_the_configuration_in_force(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # A reload replaces the daemon's configuration; a later takeover or release must not put
    # back the one HA started with (the destination file would look unchanged and stay so).
    from egress_router.ha.controller import Controller
    from egress_router.ha.settings import HaConfig as Settings

    monkeypatch.setattr(gate, "apply", lambda script: None)
    monkeypatch.setattr(Controller, "_announce_again", lambda self, delays=(): None)
    started, reloaded = config(), load_environment({**ENV, "EGRESS_DESTINATION": "81 tcp 203.0.113.26\n"})

    class Daemon:
        def __init__(self) -> None:
            self.config, self.applied = reloaded, []  # type: ignore[var-annotated]

        def _apply(self, config, why):  # type: ignore[no-untyped-def]
            self.applied.append((why, config))
            return True

    class Router:
        adjust = None

    controller = Controller(started, Settings(51), Router(), Log(stream=io.StringIO()))  # type: ignore[arg-type]
    daemon = Daemon()
    controller._takeover(daemon)  # type: ignore[arg-type]
    controller._release(daemon, "standby")  # type: ignore[arg-type]
    assert daemon.applied == [("takeover", reloaded), ("release", reloaded)]
