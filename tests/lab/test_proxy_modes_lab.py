"""The proxy modes (`http-proxy`, `dns-proxy`) on the real kernel: the router sets up the network
only, and a proxy in another container of the pod (here a small stand-in) makes its own
connections. They must leave through macvlan0 from the reserved source, the replies to the
proxy's clients must come back through eth0, and the pod's DNS lookups must stay on eth0 too,
without the router knowing the cluster's CIDRs."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from egress_router.lab import Lab, seed_env
from egress_router.lab import addresses as A
from egress_router.lab.topology import stop_process

pytestmark = pytest.mark.lab

PROXY_PORT = 3128
NAMESERVER_PORT = 53

# A stand-in for the proxy container: it accepts on the pod's address, connects on to the server
# the client names in its first line (`host port`), without choosing a source or an interface,
# and relays both ways. Before that it asks the pod's nameserver (one UDP datagram, answered by
# the test's stand-in nameserver with the address it saw) and hands the answer to the client.
STANDIN_PROXY = r"""
import socket, sys, threading
listen_on, port, nameserver = sys.argv[1], int(sys.argv[2]), sys.argv[3]
server = socket.create_server((listen_on, port))
print("ready", flush=True)
def relay(a, b):
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        b.close()
def serve(client):
    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns.settimeout(3)
    try:
        dns.sendto(b"who am I", (nameserver, 53))
        seen = dns.recv(100)
    except OSError as error:
        seen = f"no answer: {error}".encode()
    target = client.makefile("rb").readline().split()
    client.sendall(seen + b"\n")
    upstream = socket.create_connection((target[0].decode(), int(target[1])), timeout=3)
    threading.Thread(target=relay, args=(upstream, client), daemon=True).start()
    relay(client, upstream)
for _ in range(20):
    client, _ = server.accept()
    threading.Thread(target=serve, args=(client,), daemon=True).start()
"""

# The pod's nameserver, on the pod network: it answers with the address the query came from.
STANDIN_NAMESERVER = r"""
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], 53))
print("ready", flush=True)
for _ in range(20):
    data, peer = sock.recvfrom(100)
    sock.sendto(peer[0].encode(), peer)
"""


def started(lab: Lab, role: str, program: str, *args: str) -> subprocess.Popen[str]:
    process = lab.popen(role, [sys.executable, "-c", program, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 10)
    if not ready or process.stdout.readline().strip() != "ready":
        process.kill()
        raise AssertionError(f"the stand-in did not start: {process.communicate()[1]}")
    return process


@pytest.fixture
def proxy_pod(router_lab: Lab) -> Iterator[Lab]:
    """The router in http-proxy mode, the pod's resolv.conf naming a nameserver on the pod
    network (the client's namespace stands in for cluster DNS), the stand-ins running."""
    resolv = Path(f"/etc/netns/{router_lab.ns('router')}/resolv.conf")
    resolv.parent.mkdir(parents=True, exist_ok=True)
    resolv.write_text(f"nameserver {router_lab.client_ip}\noptions ndots:5\n")
    standins: list[subprocess.Popen[str]] = []
    try:
        done = router_lab.run_router(seed_env("http-proxy"))
        assert done.returncode == 0, done.stderr
        standins.append(started(router_lab, "client", STANDIN_NAMESERVER, router_lab.client_ip))
        standins.append(started(router_lab, "router", STANDIN_PROXY, router_lab.router_pod_ip, str(PROXY_PORT), router_lab.client_ip))
        yield router_lab
    finally:
        for process in standins:
            stop_process(process)
        resolv.unlink()
        os.rmdir(resolv.parent)


def through_proxy(lab: Lab, host: str, port: int) -> tuple[str, bytes]:
    """Ask the stand-in proxy, from the client pod, for `host port`: what the nameserver saw,
    and what the server said."""
    sock = lab.socket("client")
    sock.settimeout(5)
    with sock:
        sock.connect((lab.router_pod_ip, PROXY_PORT))
        sock.sendall(f"{host} {port}\n".encode())
        reader = sock.makefile("rb")
        seen = reader.readline().strip().decode()
        reply = reader.readline()
    return seen, reply


def test_the_proxys_connections_leave_from_the_source_and_its_clients_get_their_replies(proxy_pod: Lab) -> None:
    seen, reply = through_proxy(proxy_pod, "203.0.113.25", 80)
    # The lab's servers answer with what they saw: the proxy's connection came from the
    # reserved source, through the gateway, and the reply reached the client through eth0.
    assert b"203.0.113.25:80" in reply and A.SOURCE.encode() in reply, reply
    # The pod's DNS lookup went to its nameserver on the pod network, from the pod's address.
    assert seen == proxy_pod.router_pod_ip


def test_the_proxy_modes_leave_the_pod_no_gateway(proxy_pod: Lab) -> None:
    assert proxy_pod.sysctl("router", "net/ipv4/ip_forward") == "0"
    assert not proxy_pod.connect(80, address="203.0.113.25", timeout=1).ok
    table = proxy_pod.nft_table() or ""
    assert "dnat" not in table and "snat" not in table


def test_a_second_run_in_proxy_mode_changes_nothing(proxy_pod: Lab) -> None:
    rules = proxy_pod.exec("router", ["ip", "rule"]).stdout
    done = proxy_pod.run_router(seed_env("http-proxy"))
    assert done.returncode == 0, done.stderr
    assert proxy_pod.exec("router", ["ip", "rule"]).stdout == rules
    assert through_proxy(proxy_pod, "203.0.113.26", 80)[0] == proxy_pod.router_pod_ip


def test_the_listening_socket_is_reachable_only_from_the_pod_network(proxy_pod: Lab) -> None:
    # From the LAN (the node's LAN address), the reserved address takes no new connection.
    sock = proxy_pod.socket("node")
    sock.settimeout(1)
    with sock, pytest.raises(OSError):
        sock.connect((A.SOURCE, PROXY_PORT))
