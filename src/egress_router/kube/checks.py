"""The checks of `lint`: what would break the router, found in a workload's YAML.

Each check returns `Finding`s located at the line a user must change. The router's own
variables are judged by the core (`load_environment`, `parse_destinations`), so lint and the
init container never disagree about a value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from yaml.nodes import Node

from ..config import (
    DESTINATION,
    DESTINATION_FILE,
    EGRESS_INTERFACE,
    GATEWAY,
    HTTP_PORT,
    MODE,
    SOURCE,
    load_environment,
    parse_destinations,
)
from ..errors import ConfigError, Problem
from ..model import DEFAULT_EGRESS_INTERFACE, Destinations
from . import nodes, resolve
from .nodes import Document
from .render import ASSIGN_MACVLAN, NETWORKS
from .resolve import UNKNOWN, ConfigMaps, Env, Value

NEEDED_CAPABILITIES = ("NET_ADMIN", "NET_RAW")
# The variables that make a container the router. Not any EGRESS_*: OpenShift's proxy
# containers (ose-egress-http-proxy, ose-egress-dns-proxy) that run beside a router in
# http-proxy or dns-proxy mode read EGRESS_HTTP_PROXY_DESTINATION, EGRESS_DNS_PROXY_*.
ROUTER_VARIABLES = (SOURCE, GATEWAY, DESTINATION, DESTINATION_FILE, MODE)


@dataclass(frozen=True, order=True)
class Finding:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass
class Workload:
    doc: Document
    meta: Node | None
    spec: Node | None
    labels: dict[str, str] = field(default_factory=dict)
    destinations: list[Destinations] = field(default_factory=list)  # of each router container

    def at(self, node: Node | None, message: str) -> Finding:
        return Finding(self.doc.path, nodes.line(node) or nodes.line(self.doc.root), message)


def is_router(container: Node, env: Env) -> bool:
    image = nodes.text(nodes.get(container, "image")) or ""
    return any(name in env.names for name in ROUTER_VARIABLES) or "egress-router" in image.rsplit("/", 1)[-1]


def check_container(w: Workload, container: Node, init: bool, maps: ConfigMaps) -> list[Finding]:
    env = resolve.environment(container, maps, w.doc.namespace, w.doc.path)
    if not is_router(container, env):
        return []
    label = f"container {nodes.text(nodes.get(container, 'name')) or '?'}"
    findings: list[Finding] = []
    for name, value in env.values.items():
        if value.node.tag not in (nodes.STR, "tag:yaml.org,2002:map") and name.startswith("EGRESS_"):
            findings.append(w.at(value.node, f"{label}: {name} must be a string: quote {value.text!r}"))
    destination = _destination(w, container, env, maps, label, findings)
    findings += _core(w, container, env, destination, label)
    mode_value = env.values.get(MODE)
    mode = (mode_value.text.strip() if mode_value else "") or "legacy"
    where = mode_value.node if mode_value else nodes.get(container, "name")
    if mode == "init" and not init:
        findings.append(w.at(where, f"{label}: EGRESS_ROUTER_MODE=init in containers sets up and exits, "
                             "so Kubernetes restarts it over and over: put it in initContainers"))
    if mode == "legacy" and init and not env.maybe(MODE):
        findings.append(w.at(where, f"{label}: EGRESS_ROUTER_MODE={mode_value.text if mode_value else 'legacy (the default)'} "
                             "in initContainers never exits, so the pod never starts: set it to init"))
    if mode != "unit-test":
        findings += _privileges(w, container, label, maps, _wanted_interface(env))
        findings += _interface(w, env)
    return findings


def _destination(w: Workload, container: Node, env: Env, maps: ConfigMaps, label: str,
                 findings: list[Finding]) -> Value | None | object:
    """The rules' text and where it lives: inline, a ConfigMap key, or UNKNOWN."""
    file_value = env.values.get(DESTINATION_FILE)
    inline = env.values.get(DESTINATION)
    if DESTINATION_FILE in env.unknown or DESTINATION in env.unknown:
        return UNKNOWN
    if file_value is None and inline is None and env.opaque:
        return UNKNOWN  # the rules may come from the envFrom source lint cannot read
    if file_value is None or not file_value.text.strip():
        return inline
    if inline is not None and inline.text.strip():
        findings.append(w.at(inline.node, f"{label}: set either {DESTINATION} or {DESTINATION_FILE}, not both"))
    mounted = resolve.mounted_file(file_value.text.strip(), container, w.spec, maps, w.doc.namespace)  # type: ignore[arg-type]
    if mounted is None:
        findings.append(w.at(file_value.node, f"{label}: {DESTINATION_FILE} {file_value.text.strip()} "
                             "is in no volume mounted in this container"))
        return UNKNOWN
    return mounted


def _core(w: Workload, container: Node, env: Env, destination: Value | None | object, label: str) -> list[Finding]:
    environ = {name: v.text for name, v in env.values.items() if name not in (DESTINATION, DESTINATION_FILE)}
    if isinstance(destination, Value):
        environ[DESTINATION] = destination.text
        try:
            w.destinations.append(parse_destinations(destination.text))
        except ConfigError:
            pass  # reported below, by load_environment
    if env.maybe(MODE):
        # Judge as the most lenient redirect mode: legacy-only checks (the HTTP port) and the
        # proxy modes' skipping of the rules depend on a value lint cannot see.
        environ[MODE] = "init"
    if env.maybe(HTTP_PORT):
        environ[HTTP_PORT] = "0"
    skip = set(env.unknown) | ({DESTINATION} if destination is UNKNOWN else set())
    try:
        load_environment(environ)
    except ConfigError as error:
        return [_locate(w, container, env, destination, label, p) for p in error.problems
                if p.variable not in skip and not (env.opaque and p.message.startswith("is not set"))]
    return []


def _locate(w: Workload, container: Node, env: Env, destination: object, label: str, p: Problem) -> Finding:
    if p.variable == DESTINATION and isinstance(destination, Value):
        where = nodes.text_line(destination.node, p.line) if p.line else nodes.line(destination.node)
        problem = Problem(destination.origin, p.message, p.line, p.text)
        return Finding(destination.path, where, f"{label}: {problem}")
    value = env.values.get(p.variable)
    node = value.node if value else env.names.get(p.variable) or nodes.get(container, "name")
    return Finding(value.path if value else w.doc.path, nodes.line(node), f"{label}: {p}")


def _privileges(w: Workload, container: Node, label: str, maps: ConfigMaps, interface: str | None) -> list[Finding]:
    context = nodes.get(container, "securityContext")
    if nodes.is_true(nodes.get(context, "privileged")):
        return []
    added = {c.upper().removeprefix("CAP_") for c in nodes.strings(nodes.get(nodes.get(context, "capabilities"), "add"))}
    missing = [c for c in NEEDED_CAPABILITIES if c not in added and "ALL" not in added]
    where = context or nodes.get(container, "name")
    if missing:
        return [w.at(where, f"{label}: neither privileged nor granted NET_ADMIN and NET_RAW (missing "
                     f"{', '.join(missing)}): it cannot set up the interface, the routes or nftables")]
    if _forwarding(w, maps, interface) is False:
        return [w.at(where, f"{label}: not privileged, and nothing else enables net.ipv4.ip_forward: "
                     "set privileged: true, or the pod sysctl, or use egress-router-cni with forwarding: true")]
    return []


def _forwarding(w: Workload, maps: ConfigMaps, interface: str | None) -> bool | None:
    """Whether something outside the container turns forwarding on (None: cannot tell)."""
    for sysctl in nodes.items(nodes.get(nodes.get(w.spec, "securityContext"), "sysctls")):
        if nodes.text(nodes.get(sysctl, "name")) in ("net.ipv4.ip_forward", "net/ipv4/ip_forward"):
            return nodes.text(nodes.get(sysctl, "value")) == "1"
    selections = _networks(w)
    if selections is None:
        return False  # OpenShift SDN's annotation creates the macvlan and nothing more
    # Only the attachment that creates the router's egress interface can be the one whose
    # plugin enables forwarding for it.
    chosen = [s for s in selections if interface is not None and s.get("interface") == interface]
    if len(chosen) != 1:
        return None
    namespace = chosen[0].get("namespace") or w.doc.namespace
    found = [d for d in maps.docs if d.kind == "NetworkAttachmentDefinition" and d.name == chosen[0].get("name")
             and d.namespace in (None, namespace)]
    if len(found) != 1:
        return None
    try:
        config = json.loads(nodes.text(nodes.get(nodes.get(found[0].root, "spec"), "config")) or "")
    except ValueError:
        return None
    if not isinstance(config, dict):
        return None
    plugins = config.get("plugins") if "plugins" in config else [config]  # a conflist, or one plugin
    if not isinstance(plugins, list) or not all(isinstance(p, dict) for p in plugins):
        return None
    if any(_enables_forwarding(p) for p in plugins):
        return True
    # Only plugins known not to enable it: false. Any other (a custom one) might: unknown.
    return False if all(p.get("type") in ("egress-router-cni", "macvlan") for p in plugins) else None


def _enables_forwarding(plugin: dict[str, object]) -> bool:
    if plugin.get("type") == "egress-router-cni":
        return plugin.get("forwarding") is True  # the plugin refuses anything but a boolean
    sysctl = plugin.get("sysctl")
    return plugin.get("type") == "tuning" and isinstance(sysctl, dict) and (
        str(sysctl.get("net.ipv4.ip_forward")) == "1" or str(sysctl.get("net/ipv4/ip_forward")) == "1")


def _networks(w: Workload) -> list[dict[str, str]] | None:
    """Multus' network selection: the JSON form, or `[ns/]name[@interface]` comma-separated."""
    node = nodes.get(nodes.get(w.meta, "annotations"), NETWORKS)
    value = nodes.text(node)
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    if isinstance(parsed, list):
        return [{k: v for k, v in e.items() if isinstance(v, str)} for e in parsed if isinstance(e, dict)]
    result = []
    for item in filter(None, (i.strip() for i in value.split(","))):
        namespace, _, rest = item.rpartition("/")
        name, _, interface = rest.partition("@")
        result.append({"name": name, **({"namespace": namespace} if namespace else {}),
                       **({"interface": interface} if interface else {})})
    return result


def _interface(w: Workload, env: Env) -> list[Finding]:
    """Something must create the egress interface, under the name the router looks for."""
    wanted = _wanted_interface(env)
    annotations = nodes.get(w.meta, "annotations")
    assign = nodes.get(annotations, ASSIGN_MACVLAN)
    if assign is not None:
        if assign.tag != nodes.STR:
            return [w.at(assign, f'{ASSIGN_MACVLAN}: {nodes.text(assign)} is not a string: write "true" (quoted), '
                         'otherwise it is rejected or ignored and the router fails with "Cannot find device macvlan0"')]
        return []
    selections = _networks(w)
    if selections is None:
        interface = wanted or DEFAULT_EGRESS_INTERFACE
        return [w.at(w.meta, f'nothing creates {interface}: add the annotation {ASSIGN_MACVLAN}: "true" (OpenShift SDN) '
                     f"or {NETWORKS} with a macvlan attachment (Multus)")]
    if wanted is not None and not any(s.get("interface") == wanted for s in selections):
        return [w.at(nodes.get(annotations, NETWORKS), f'{NETWORKS} names no interface {wanted}: Multus calls it '
                     f'net1, net2... unless the selection says "interface": "{wanted}"')]
    return []


def _wanted_interface(env: Env) -> str | None:
    """The egress interface the router looks for; None when lint cannot see it."""
    if EGRESS_INTERFACE in env.values:
        return env.values[EGRESS_INTERFACE].text.strip() or DEFAULT_EGRESS_INTERFACE
    return None if env.maybe(EGRESS_INTERFACE) else DEFAULT_EGRESS_INTERFACE


def check_service(doc: Document, workloads: list[Workload]) -> list[Finding]:
    spec = nodes.get(doc.root, "spec")
    selector = {k: nodes.text(v) for k, v in nodes.pairs(nodes.get(spec, "selector"))}
    targets = [w for w in workloads if selector and w.destinations and _same_namespace(doc, w.doc)
               and all(w.labels.get(k) == v for k, v in selector.items())]
    findings: list[Finding] = []
    for w in targets:
        for rules in w.destinations:
            findings += _ports(doc, spec, rules, w)
    return findings


def _same_namespace(a: Document, b: Document) -> bool:
    return a.namespace is None or b.namespace is None or a.namespace == b.namespace


def _ports(doc: Document, spec: Node | None, rules: Destinations, w: Workload) -> list[Finding]:
    mapped = {(m.protocol, m.port) for m in rules.mappings}
    exposed: set[tuple[str, int]] = set()
    findings = []
    for port in nodes.items(nodes.get(spec, "ports")):
        protocol = (nodes.text(nodes.get(port, "protocol")) or "TCP").lower()
        number = nodes.text(nodes.get(port, "port")) or ""
        target = nodes.text(nodes.get(port, "targetPort")) or number
        if not target.isdigit():
            continue  # a named port: resolved by Kubernetes against the container's ports
        exposed.add((protocol, int(target)))
        if (protocol, int(target)) not in mapped and not rules.fallbacks:
            findings.append(Finding(doc.path, nodes.line(port), f"Service {doc.name}: port {number}/{protocol.upper()} "
                                    f"(targetPort {target}) matches no rule of {w.doc.kind} {w.doc.name} and there is "
                                    "no fallback: connections to it are refused"))
    ports_node = nodes.key_node(spec, "ports") or spec
    for protocol, local in sorted(mapped - exposed):
        findings.append(Finding(doc.path, nodes.line(ports_node), f"Service {doc.name}: mapped port {local}/{protocol} "
                                f"of {w.doc.kind} {w.doc.name} is not exposed (no port with targetPort {local} "
                                f"and protocol {protocol.upper()})"))
    return findings
