"""The lab's address plan (docs/lab.md) and the seed's example mapped onto it. Pure data.

Only documentation ranges are used (RFC 5737, RFC 3849), so nothing the lab sends can ever mean
a real host, and the tests can tell every hop apart by its address.
"""

from __future__ import annotations

ROLES = ("node", "lan", "router", "client", "gw", "ext")
NODE_B = "node_b"  # the client's node in the per-node wiring

# Pod network: the router pod and the client pod (docs/lab.md, "Pod networks"). The shared
# wiring's numbers; lab/wirings.py has each wiring's.
ROUTER_IP = "198.51.100.2"
CLIENT_IP = "198.51.100.3"
POD_PREFIX = 26  # the node's pod subnet (shared wiring: the node's gateway is .1)
CLUSTER_NETWORK = "198.51.100.0/25"  # every node's pod subnet
ROUTER_IP6 = "2001:db8:3::2"
CLIENT_IP6 = "2001:db8:3::3"
POD_GATEWAY = "198.51.100.1"
# Calico's fake gateway, link-local so that it never leaves a pod's link; and the IPv6
# gateway that a node answers on each pod's host-side veth.
CALICO_GATEWAY = "169.254.1.1"
LINK_GATEWAY6 = "fe80::1"

# Per-node subnets: node A holds the router pod's, node B the client pod's.
NODE_A_PODS = "198.51.100.0/26"
NODE_B_PODS = "198.51.100.64/26"
NODE_B_GATEWAY = "198.51.100.65"
NODE_B_CLIENT_IP = "198.51.100.66"
NODE_A_PODS6 = "2001:db8:3:a::/64"
NODE_B_PODS6 = "2001:db8:3:b::/64"

# The Service in front of the router pod, DNATed by the client's node as kube-proxy does.
CLUSTER_IP = "198.51.100.200"
CLUSTER_IP6 = "2001:db8:3:c::200"

# Node LAN (bridge br0 in the lan namespace).
LAN_PREFIX = 24
GATEWAY = "192.0.2.1"
NODE_IP = "192.0.2.10"  # node A: the router's node, and kubelet's probe source
NODE_B_IP = "192.0.2.11"
SOURCE = "192.0.2.99"
GATEWAY6 = "2001:db8:1::1"
NODE_IP6 = "2001:db8:1::10"
NODE_B_IP6 = "2001:db8:1::11"
SOURCE6 = "2001:db8:1::99"

# Outside, behind the gateway.
OUTSIDE_GATEWAY = "203.0.113.1"
EXTERNAL = ("203.0.113.25", "203.0.113.26", "203.0.113.27")
OUTSIDE_GATEWAY6 = "2001:db8:2::1"
EXTERNAL6 = ("2001:db8:2::25", "2001:db8:2::26", "2001:db8:2::27")
V6_PREFIX = 64

# Bulk transfer endpoints (lab/servers.py): a download (`source`) and an upload (`sink`).
DOWNLOAD_PORT = 9000
UPLOAD_PORT = 9001

# The seed's example, verbatim but for the LAN addresses (192.168.12.x -> 192.0.2.x).
SEED_DESTINATION = (
    "80   tcp 203.0.113.25\n8080 tcp 203.0.113.26 80\n8443 tcp 203.0.113.26 443\n203.0.113.27\n"
)

# What each seed rule does, as (local port, protocol, server address, server port). The last
# one is an example of the fallback: any other port, same port number on 203.0.113.27.
SEED_EXPECTATIONS = (
    (80, "tcp", "203.0.113.25", 80),
    (8080, "tcp", "203.0.113.26", 80),
    (8443, "tcp", "203.0.113.26", 443),
    (5000, "tcp", "203.0.113.27", 5000),
)


def seed_env(mode: str = "init", **overrides: str) -> dict[str, str]:
    """The seed Pod's environment in the lab; keyword arguments add or replace variables,
    e.g. `seed_env("legacy", EGRESS_ROUTER_DEBUG="1")`. To unset one, delete it from the dict."""
    env = {
        "EGRESS_SOURCE": f"{SOURCE}/{LAN_PREFIX}",
        "EGRESS_GATEWAY": GATEWAY,
        "EGRESS_DESTINATION": SEED_DESTINATION,
        "EGRESS_ROUTER_MODE": mode,
    }
    env.update(overrides)
    return env
