"""The lab's address plan (docs/lab.md) and the seed's example mapped onto it. Pure data.

Only documentation ranges are used (RFC 5737, RFC 3849), so nothing the lab sends can ever mean
a real host, and the tests can tell every hop apart by its address.
"""

from __future__ import annotations

ROLES = ("node", "lan", "router", "client", "gw", "ext")

# Pod network (router eth0 <-> client eth0).
ROUTER_IP = "198.51.100.2"
CLIENT_IP = "198.51.100.3"
POD_PREFIX = 24
ROUTER_IP6 = "2001:db8:3::2"
CLIENT_IP6 = "2001:db8:3::3"

# Node LAN (bridge br0 in the lan namespace).
LAN_PREFIX = 24
GATEWAY = "192.0.2.1"
NODE_IP = "192.0.2.10"
SOURCE = "192.0.2.99"
GATEWAY6 = "2001:db8:1::1"
NODE_IP6 = "2001:db8:1::10"
SOURCE6 = "2001:db8:1::99"

# Outside, behind the gateway.
OUTSIDE_GATEWAY = "203.0.113.1"
EXTERNAL = ("203.0.113.25", "203.0.113.26", "203.0.113.27")
OUTSIDE_GATEWAY6 = "2001:db8:2::1"
EXTERNAL6 = ("2001:db8:2::25", "2001:db8:2::26", "2001:db8:2::27")
V6_PREFIX = 64

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
