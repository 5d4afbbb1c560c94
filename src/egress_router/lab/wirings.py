"""The pod side of the lab, wired the ways real CNIs wire it (docs/lab.md, "Pod networks").

- `shared` (OpenShift SDN-like): both pods on one node in one on-link subnet, with the whole
  cluster network on eth0 and the default route via the node's gateway address.
- `calico`: each pod a /32 with `default via 169.254.1.1 dev eth0`; the node answers ARP on the
  pods' host-side veths (proxy_arp) and routes a /32 to each pod.
- `per-node` (flannel host-gw, OVN-Kubernetes, Calico BGP): node A holds the router pod's
  subnet, node B the client pod's; each node routes the other's subnet via its LAN address.

In every wiring each pod has its own veth into its node, and the node routes between them: a
pod's traffic to another pod, to a ClusterIP or to the outside always crosses its node, as on
a real cluster. Pure data: topology.py runs the `ip` lines built here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from . import addresses as A

WIRINGS = ("shared", "calico", "per-node")
DEFAULT_WIRING = "shared"
KUBE_PROXY_TABLE = "lab_kube_proxy"
BLACKHOLE_TABLE = "lab_pmtu_blackhole"
DEFAULT_MTU = 1500


@dataclass(frozen=True)
class Pod:
    """One pod's eth0: its addresses, its routes, and the node and host-side veth it hangs off."""

    role: str
    node: str
    veth: str
    address: str
    address6: str
    routes: tuple[str, ...]
    routes6: tuple[str, ...]

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]

    @property
    def ip6(self) -> str:
        return self.address6.split("/")[0]

    def lines(self, ipv6: bool) -> list[str]:
        """What the pod's CNI sets up on eth0 (`address replace`: also right on a second run)."""
        lines = [f"address replace {self.address} dev eth0", *self.routes]
        if ipv6:
            lines += [f"address replace {self.address6} dev eth0 nodad", *self.routes6]
        return lines


@dataclass(frozen=True)
class Wiring:
    name: str
    router: Pod
    client: Pod
    # Each node's pod side: addresses and routes toward its pods (and the other node's).
    node_lines: Mapping[str, tuple[str, ...]]
    node_lines6: Mapping[str, tuple[str, ...]]
    # The node answers ARP for its pods' peers on their veths (shared and calico).
    proxy_arp: bool = False
    # (node, veth, address): the node answers neighbour solicitations for `address` on `veth`.
    proxy_ndp: tuple[tuple[str, str, str], ...] = field(default=())

    @property
    def nodes(self) -> tuple[str, ...]:
        return ("node", A.NODE_B) if self.client.node == A.NODE_B else ("node",)

    @property
    def roles(self) -> tuple[str, ...]:
        return A.ROLES + self.nodes[1:]

    @property
    def bridge_ports(self) -> tuple[str, ...]:
        return ("node0", "gw0", "node1") if A.NODE_B in self.nodes else ("node0", "gw0")

    def pods(self) -> tuple[Pod, Pod]:
        return (self.router, self.client)


def _shared() -> Wiring:
    pod_routes = (
        f"route replace {A.CLUSTER_NETWORK} dev eth0",
        f"route replace default via {A.POD_GATEWAY} dev eth0",
    )
    pod_routes6 = (f"route replace default via {A.LINK_GATEWAY6} dev eth0",)
    router = Pod(
        "router", "node", "vr0", f"{A.ROUTER_IP}/{A.POD_PREFIX}", f"{A.ROUTER_IP6}/64",
        pod_routes, pod_routes6,
    )  # fmt: skip
    client = Pod(
        "client", "node", "vc0", f"{A.CLIENT_IP}/{A.POD_PREFIX}", f"{A.CLIENT_IP6}/64",
        pod_routes, pod_routes6,
    )  # fmt: skip
    node = (
        # The node's gateway address (OpenShift SDN's tun0 holds it); on lo, as the lab's
        # kernels may lack the dummy driver.
        f"address add {A.POD_GATEWAY}/32 dev lo",
        *_host_routes((router, client), 32, lambda p: p.ip),
    )
    node6 = (*_link_gateways((router, client)), *_host_routes((router, client), 128, _ip6))
    # Pods on one on-link /64: the node answers for each pod on the other's veth.
    ndp = (("node", router.veth, client.ip6), ("node", client.veth, router.ip6))
    return Wiring("shared", router, client, {"node": node}, {"node": node6}, True, ndp)


def _calico() -> Wiring:
    routes = (
        f"route replace {A.CALICO_GATEWAY} dev eth0 scope link",
        f"route replace default via {A.CALICO_GATEWAY} dev eth0",
    )
    routes6 = (f"route replace default via {A.LINK_GATEWAY6} dev eth0",)
    router = Pod("router", "node", "vr0", f"{A.ROUTER_IP}/32", f"{A.ROUTER_IP6}/128", routes, routes6)
    client = Pod("client", "node", "vc0", f"{A.CLIENT_IP}/32", f"{A.CLIENT_IP6}/128", routes, routes6)
    pods = (router, client)
    node = tuple(_host_routes(pods, 32, lambda p: p.ip))
    node6 = (*_link_gateways(pods), *_host_routes(pods, 128, _ip6))
    return Wiring("calico", router, client, {"node": node}, {"node": node6}, proxy_arp=True)


def _per_node() -> Wiring:
    a_gateway6, b_gateway6 = "2001:db8:3:a::1", "2001:db8:3:b::1"
    router = Pod(
        "router", "node", "vr0", f"{A.ROUTER_IP}/26", "2001:db8:3:a::2/64",
        (f"route replace default via {A.POD_GATEWAY} dev eth0",),
        (f"route replace default via {a_gateway6} dev eth0",),
    )  # fmt: skip
    client = Pod(
        "client", A.NODE_B, "vc0", f"{A.NODE_B_CLIENT_IP}/26", "2001:db8:3:b::3/64",
        (f"route replace default via {A.NODE_B_GATEWAY} dev eth0",),
        (f"route replace default via {b_gateway6} dev eth0",),
    )  # fmt: skip
    node_lines = {
        "node": (
            f"address add {A.POD_GATEWAY}/26 dev vr0",
            f"route replace {A.NODE_B_PODS} via {A.NODE_B_IP}",
        ),
        A.NODE_B: (
            f"address add {A.NODE_B_GATEWAY}/26 dev vc0",
            f"route replace {A.NODE_A_PODS} via {A.NODE_IP}",
        ),
    }
    node_lines6 = {
        "node": (
            f"address add {a_gateway6}/64 dev vr0 nodad",
            f"route replace {A.NODE_B_PODS6} via {A.NODE_B_IP6}",
        ),
        A.NODE_B: (
            f"address add {b_gateway6}/64 dev vc0 nodad",
            f"route replace {A.NODE_A_PODS6} via {A.NODE_IP6}",
        ),
    }
    return Wiring("per-node", router, client, node_lines, node_lines6)


def _ip6(pod: Pod) -> str:
    return pod.ip6


def _host_routes(pods: tuple[Pod, ...], length: int, address: Callable[[Pod], str]) -> list[str]:
    return [f"route replace {address(pod)}/{length} dev {pod.veth}" for pod in pods]


def _link_gateways(pods: tuple[Pod, ...]) -> list[str]:
    # Calico's IPv6 gateway: the node answers fe80::1 on every pod's host-side veth.
    return [f"address add {A.LINK_GATEWAY6}/64 dev {pod.veth} nodad" for pod in pods]


_BUILDERS = {"shared": _shared, "calico": _calico, "per-node": _per_node}


def wiring(name: str) -> Wiring:
    if name not in _BUILDERS:
        raise ValueError(f"unknown lab wiring {name!r} (one of {', '.join(WIRINGS)})")
    return _BUILDERS[name]()


# -- what topology.py runs ---------------------------------------------------------------------


def host_links(w: Wiring, n: Callable[[str], str], pod_mtu: int) -> list[str]:
    """The veths and the bridge, each end created directly in its namespace (`n`: role ->
    namespace name). The router pod's veth pair gets `pod_mtu`; the client's keeps 1500."""
    lines = [
        f"link add nic0 netns {n('node')} type veth peer name node0 netns {n('lan')}",
        f"link add lan0 netns {n('gw')} type veth peer name gw0 netns {n('lan')}",
        f"link add ext0 netns {n('gw')} type veth peer name eth0 netns {n('ext')}",
        # No multicast snooping: IPv6 neighbour discovery must flood without an MLD querier.
        f"link add br0 netns {n('lan')} type bridge mcast_snooping 0",
    ]
    if A.NODE_B in w.nodes:
        lines.append(f"link add nic0 netns {n(A.NODE_B)} type veth peer name node1 netns {n('lan')}")
    for pod, mtu in ((w.router, pod_mtu), (w.client, DEFAULT_MTU)):
        lines.append(
            f"link add eth0 netns {n(pod.role)} mtu {mtu} type veth"
            f" peer name {pod.veth} netns {n(pod.node)} mtu {mtu}"
        )
    return lines


def sysctls(role: str, rp_filter: int) -> list[tuple[str, str]]:
    """Set before any interface exists, so that new interfaces inherit them."""
    values = [
        # No duplicate address detection: nothing in the lab should wait a second for it.
        ("net/ipv6/conf/all/accept_dad", "0"),
        ("net/ipv6/conf/default/accept_dad", "0"),
    ]
    # The router starts with forwarding off whatever the host has: the router must switch it
    # on itself. Nodes forward for their pods, the gateway for the LAN.
    forward = "1" if role in ("gw", "node", A.NODE_B) else "0"
    values += [("net/ipv4/ip_forward", forward), ("net/ipv6/conf/all/forwarding", forward)]
    # IPv4 namespaces inherit the host's reverse-path filter: say what each one has. The
    # router's is the one that matters (strict, as many nodes set it, unless opted out).
    strict = str(rp_filter) if role == "router" else "0"
    values += [("net/ipv4/conf/all/rp_filter", strict), ("net/ipv4/conf/default/rp_filter", strict)]
    if role in ("node", A.NODE_B, "gw"):
        # Every "fragmentation needed" a test provokes must be sent, not rate-limited away.
        values += [("net/ipv4/icmp_ratelimit", "0"), ("net/ipv6/icmp/ratelimit", "0")]
    return values


def link_sysctls(w: Wiring, role: str, ipv6: bool) -> list[tuple[str, str]]:
    """Per-interface settings of a node's pod side, once the interfaces exist."""
    values: list[tuple[str, str]] = []
    for pod in w.pods():
        if pod.node != role:
            continue
        if w.proxy_arp:
            # Answer at once, as Calico sets it; the kernel's default waits up to 0.8 s.
            values += [
                (f"net/ipv4/conf/{pod.veth}/proxy_arp", "1"),
                (f"net/ipv4/neigh/{pod.veth}/proxy_delay", "0"),
            ]
        if ipv6 and any(node == role and veth == pod.veth for node, veth, _ in w.proxy_ndp):
            values += [
                (f"net/ipv6/conf/{pod.veth}/proxy_ndp", "1"),
                (f"net/ipv6/neigh/{pod.veth}/proxy_delay", "0"),
            ]
    return values


def _addr(address: str, prefix: int, dev: str) -> str:
    return f"address add {address}/{prefix} dev {dev}" + (" nodad" if ":" in address else "")


def _lan_lines(role: str, ipv6: bool) -> list[str]:
    v4: dict[str, list[str]] = {
        "node": [_addr(A.NODE_IP, A.LAN_PREFIX, "nic0"), f"route replace default via {A.GATEWAY}"],
        A.NODE_B: [
            _addr(A.NODE_B_IP, A.LAN_PREFIX, "nic0"),
            f"route replace default via {A.GATEWAY}",
        ],
        # Deliberately no route back to the pod networks: only the router's SNAT brings
        # replies home, and a pod's packet sent out un-NATed by its node is never answered.
        "gw": [_addr(A.GATEWAY, A.LAN_PREFIX, "lan0"), _addr(A.OUTSIDE_GATEWAY, 24, "ext0")],
        "ext": [
            *(_addr(a, 24, "eth0") for a in A.EXTERNAL),
            f"route replace default via {A.OUTSIDE_GATEWAY}",
        ],
    }
    v6: dict[str, list[str]] = {
        "node": [_addr(A.NODE_IP6, A.V6_PREFIX, "nic0"), f"route replace default via {A.GATEWAY6}"],
        A.NODE_B: [
            _addr(A.NODE_B_IP6, A.V6_PREFIX, "nic0"),
            f"route replace default via {A.GATEWAY6}",
        ],
        "gw": [
            _addr(A.GATEWAY6, A.V6_PREFIX, "lan0"),
            _addr(A.OUTSIDE_GATEWAY6, A.V6_PREFIX, "ext0"),
        ],
        "ext": [
            *(_addr(a, A.V6_PREFIX, "eth0") for a in A.EXTERNAL6),
            f"route replace default via {A.OUTSIDE_GATEWAY6}",
        ],
    }
    return v4.get(role, []) + (v6.get(role, []) if ipv6 else [])


def links_up(w: Wiring, role: str) -> list[str]:
    fixed = {
        "lan": [*w.bridge_ports, "br0"],
        "router": ["eth0"],
        "client": ["eth0"],
        "gw": ["lan0", "ext0"],
        "ext": ["eth0"],
    }
    if role in w.nodes:
        return ["nic0", *(pod.veth for pod in w.pods() if pod.node == role)]
    return fixed[role]


def namespace_setup(w: Wiring, role: str, ipv6: bool) -> list[str]:
    """The `ip -batch` lines that configure one namespace."""
    lines = ["link set lo up"]
    if role == "lan":
        lines += [f"link set {port} master br0" for port in w.bridge_ports]
    lines += [f"link set {dev} up" for dev in links_up(w, role)]
    lines += _lan_lines(role, ipv6)
    if role in w.nodes:
        lines += w.node_lines.get(role, ())
        if ipv6:
            lines += w.node_lines6.get(role, ())
            lines += [f"neigh add proxy {a} dev {v}" for node, v, a in w.proxy_ndp if node == role]
    for pod in w.pods():
        if pod.role == role:
            lines += pod.lines(ipv6)
    return lines


def kube_proxy(w: Wiring, ipv6: bool) -> str:
    """The client's node's Service: the ClusterIP DNATed to the router pod, every port to the
    same port (port = targetPort), in prerouting for pods and in output for the node itself,
    as kube-proxy's nftables mode does."""
    rules = [f"ip daddr {A.CLUSTER_IP} dnat ip to {w.router.ip}"]
    if ipv6:
        rules.append(f"ip6 daddr {A.CLUSTER_IP6} dnat ip6 to {w.router.ip6}")
    chains = [
        f"  chain {hook} {{\n    type nat hook {hook} priority -100; policy accept;\n"
        + "".join(f"    {rule}\n" for rule in rules)
        + "  }\n"
        for hook in ("prerouting", "output")
    ]
    return f"table inet {KUBE_PROXY_TABLE} {{\n{''.join(chains)}}}\n"


def pmtu_blackhole() -> str:
    """What path MTU discovery needs ("fragmentation needed", "packet too big") is dropped, as
    too many firewalls do: only MSS clamping keeps large transfers working then. Forwarded
    ones (the gateway's, for downloads) and sent ones (a node's, for uploads)."""
    drops = "    icmp type destination-unreachable icmp code 4 drop\n    icmpv6 type packet-too-big drop\n"
    return (
        f"table inet {BLACKHOLE_TABLE} {{\n"
        f"  chain forward {{\n    type filter hook forward priority filter; policy accept;\n{drops}  }}\n"
        f"  chain output {{\n    type filter hook output priority filter; policy accept;\n{drops}  }}\n"
        "}\n"
    )
