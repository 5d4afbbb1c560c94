"""The names of the router's one nftables table and of what lives in it. Pure data.

Everything that reads or writes the table (the plan, the element writer, the listing reader,
metrics, status, the lab) names its parts through these, so that the table's layout is stated
once.
"""

from __future__ import annotations

TABLE_FAMILY = "inet"
TABLE_NAME = "egress_router"
TABLE_REF = f"{TABLE_FAMILY} {TABLE_NAME}"
FAMILIES = (4, 6)
PROTOCOLS = ("tcp", "udp", "sctp")


def map_name(protocol: str, family: int) -> str:
    """The NAT map of one protocol and family: local port -> address . remote port."""
    return f"{protocol}{family}"


def fallback_counter_name(family: int) -> str:
    return f"fallback{family}"


def bytes_set_name(protocol: str, family: int) -> str:
    """A set that traffic fills: one element per local port, counting bytes both ways."""
    return f"bytes_{protocol}{family}"


def connections_set_name(protocol: str, family: int) -> str:
    """A set that traffic fills: one element per local port, counting new connections."""
    return f"conns_{protocol}{family}"


# --- the router's routing objects in its pod's namespace ------------------------------------
# Redirected connections leave through the egress interface by policy routing: nftables marks
# their packets, a rule sends the marked ones to the router's own table. The pod's main table
# is left as its network made it. The numbers only have to be unused in the pod: nothing else
# there makes tables or rules of its own.
ROUTE_TABLE = 2430
FWMARK = 0x2430  # on the packets of connections the router redirected
# The conntrack mark of connections an HA standby relays to the active over the pod network:
# they are not marked for the egress interface, and the forward chain passes them.
RELAY_CT_MARK = 0x2431
RULE_PRIORITY = 2430  # fwmark FWMARK lookup ROUTE_TABLE
# The proxy modes: the proxy in the pod makes its own connections, which leave through the
# egress interface, while replies to its clients and the pod's DNS lookups stay on eth0.
POD_SOURCE_PRIORITY = 2431  # from <the pod interface's address> lookup main
NAMESERVER_PRIORITY = 2432  # to <nameserver> lookup main
LOCAL_PRIORITY = 2433  # iif lo lookup ROUTE_TABLE
RULE_PRIORITIES = (RULE_PRIORITY, POD_SOURCE_PRIORITY, NAMESERVER_PRIORITY, LOCAL_PRIORITY)
