"""A checked `RouterSpec` -> Kubernetes documents, and those documents -> YAML with comments.

The documents are plain dicts (PyYAML writes them); the few comments a reader needs (why a
container is privileged, what the kubelet must allow) are put in afterwards, above the line
they explain, because PyYAML cannot write comments itself.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from ..config import DESTINATION, DESTINATION_FILE, GATEWAY, MODE, SOURCE
from ..model import DEFAULT_EGRESS_INTERFACE, DEFAULT_HTTP_PORT, RouterConfig
from .spec import RouterSpec

ASSIGN_MACVLAN = "pod.network.openshift.io/assign-macvlan"
NETWORKS = "k8s.v1.cni.cncf.io/networks"
DESTINATIONS_KEY = "destinations"
DESTINATIONS_DIR = "/etc/egress-router"
NAD_API_VERSION = "k8s.cni.cncf.io/v1"
METRICS_PORT_NAME = "metrics"

Document = dict[str, Any]

PRIVILEGED_WHY = """\
privileged is still required on OpenShift SDN: the annotation only creates macvlan0, and
the router container must itself write net.ipv4.ip_forward (and, for IPv6,
net.ipv6.conf.all.forwarding) in the pod's namespace; /proc/sys is read-only in a
container that is not privileged, and no capability makes it writable."""

CAPABILITIES_WHY = """\
NET_ADMIN: addresses, routes and the nftables table; NET_RAW: the gratuitous ARP / neighbour
advertisement that tells the LAN where the reserved address now lives. Forwarding is
switched on outside this container (by egress-router-cni's "forwarding": true, or by the
pod's sysctls), so it need not be privileged."""

SYSCTLS_WHY = """\
The reference macvlan plugin does not enable forwarding: the pod asks for it, and for loose
reverse-path filtering on the macvlan interface (replies arrive there from addresses the pod's
own routes send elsewhere). The kubelet must allow them (--allowed-unsafe-sysctls=
net.ipv4.ip_forward,net.ipv4.conf.*.rp_filter,net.ipv6.conf.all.forwarding), otherwise the
pod is rejected with SysctlForbidden; or make the router container privileged."""

FALLBACK_WHY = """\
The fallback receives only the ports a Service exposes: add a port here for each other
port that clients should reach through the fallback address."""


def documents(spec: RouterSpec, config: RouterConfig) -> list[Document]:
    """ConfigMap, attachment (multus), Pod or Deployment, Service: in the order to apply them."""
    docs = [config_map(spec)]
    if spec.flavor == "multus":
        docs.append(attachment(spec))
    docs.append(deployment(spec) if spec.deployment or spec.ha else pod(spec))
    if spec.ha:
        docs.append(disruption_budget(spec))
    service_doc = service(spec, config)
    if service_doc is not None:
        docs.append(service_doc)
    return docs


def _metadata(spec: RouterSpec, name: str, **extra: Any) -> Document:
    meta: Document = {"name": name}
    if spec.namespace:
        meta["namespace"] = spec.namespace
    meta.update(extra)
    return meta


def labels(spec: RouterSpec) -> dict[str, str]:
    # `name` is the label the seed's examples (and the Services users wrote for them) select on.
    return {"name": spec.name, "app.kubernetes.io/name": "egress-router"}


def config_map_name(spec: RouterSpec) -> str:
    return f"{spec.name}-destinations"


def attachment_name(spec: RouterSpec) -> str:
    return f"{spec.name}-macvlan"


def config_map(spec: RouterSpec) -> Document:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(spec, config_map_name(spec), labels=labels(spec)),
        "data": {DESTINATIONS_KEY: spec.destination_text},
    }


def cni_config(spec: RouterSpec) -> Document:
    config: Document = {"cniVersion": "1.0.0", "name": attachment_name(spec), "type": spec.cni_type}
    if spec.parent:
        config["master"] = spec.parent  # otherwise the node's default-route interface
    config["mode"] = spec.macvlan_mode
    if spec.cni_type == "egress-router-cni":
        config["forwarding"] = True
    else:
        config["ipam"] = {}  # the init container sets the address, not IPAM
    return config


def attachment(spec: RouterSpec) -> Document:
    return {
        "apiVersion": NAD_API_VERSION,
        "kind": "NetworkAttachmentDefinition",
        "metadata": _metadata(spec, attachment_name(spec), labels=labels(spec)),
        "spec": {"config": json.dumps(cni_config(spec), indent=2)},
    }


def _annotations(spec: RouterSpec) -> dict[str, str]:
    if spec.flavor == "openshift":
        # Always a string: a bare `true` is a boolean and OpenShift ignores it. A NIC name
        # instead of "true" puts the macvlan on that NIC.
        return {ASSIGN_MACVLAN: spec.parent or "true"}
    selection = [{"name": attachment_name(spec), "interface": DEFAULT_EGRESS_INTERFACE}]
    return {NETWORKS: json.dumps(selection)}


def _env(spec: RouterSpec) -> list[Document]:
    env: list[Document] = [
        {"name": SOURCE, "value": ",".join(spec.sources)},
        {"name": GATEWAY, "value": ",".join(spec.gateways)},
    ]
    if spec.via == "file":
        env.append({"name": DESTINATION_FILE, "value": f"{DESTINATIONS_DIR}/{DESTINATIONS_KEY}"})
    else:
        ref = {"name": config_map_name(spec), "key": DESTINATIONS_KEY}
        env.append({"name": DESTINATION, "valueFrom": {"configMapKeyRef": ref}})
    env.append({"name": MODE, "value": spec.mode})
    env += [{"name": name, "value": value} for name, value in spec.ha_environment().items()]
    return env


def _router_security(spec: RouterSpec) -> Document:
    if spec.flavor == "openshift":
        return {"privileged": True}
    return {"capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}}


def pod_spec(spec: RouterSpec) -> Document:
    router: Document = {
        "name": "egress-router",
        "image": spec.image,
        "securityContext": _router_security(spec),
        "env": _env(spec),
    }
    body: Document
    if spec.mode == "legacy":
        # The router stays: it is the pod's one container, watched through its HTTP port.
        router["ports"] = [{"name": METRICS_PORT_NAME, "containerPort": DEFAULT_HTTP_PORT, "protocol": "TCP"}]
        router["readinessProbe"] = {"httpGet": {"path": "/readyz", "port": DEFAULT_HTTP_PORT}}
        if spec.ha:
            # A replica that becomes active (or a standby that can relay again) is in the
            # Service's endpoints within about a second.
            router["readinessProbe"].update({"periodSeconds": 1, "failureThreshold": 1})
        router["livenessProbe"] = {"httpGet": {"path": "/healthz", "port": DEFAULT_HTTP_PORT}}
        body = {"containers": [router]}
    else:
        body = {"initContainers": [router]}
        body["containers"] = [
            {
                "name": "egress-router-wait",
                "image": spec.wait_image,
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }
        ]
    if spec.via == "file":
        router["volumeMounts"] = [
            {"name": DESTINATIONS_KEY, "mountPath": DESTINATIONS_DIR, "readOnly": True}
        ]
        body["volumes"] = [{"name": DESTINATIONS_KEY, "configMap": {"name": config_map_name(spec)}}]
    if spec.flavor == "multus" and spec.cni_type != "egress-router-cni":
        sysctls = [{"name": "net.ipv4.ip_forward", "value": "1"}]
        if any(":" not in s for s in spec.sources):
            # Loose reverse-path filtering where the replies come in (strict drops them).
            sysctls.append({"name": f"net.ipv4.conf.{DEFAULT_EGRESS_INTERFACE}.rp_filter", "value": "2"})
        if any(":" in s for s in spec.sources):
            sysctls.append({"name": "net.ipv6.conf.all.forwarding", "value": "1"})
        body["securityContext"] = {"sysctls": sysctls}
    return body


def pod(spec: RouterSpec) -> Document:
    meta = _metadata(spec, spec.name, labels=labels(spec), annotations=_annotations(spec))
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec(spec)}


def deployment(spec: RouterSpec) -> Document:
    # One replica, replaced only after the old pod is gone (Recreate): two pods must never
    # claim the same reserved address on the LAN.
    template = {
        "metadata": {"labels": labels(spec), "annotations": _annotations(spec)},
        "spec": pod_spec(spec),
    }
    if spec.ha:
        return ha_deployment(spec, template)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(spec, spec.name, labels=labels(spec)),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"name": spec.name}},
            "template": template,
        },
    }


def ha_deployment(spec: RouterSpec, template: Document) -> Document:
    """Two replicas that share the address (VRRP elects who holds it), never on one node; a
    rollout replaces one at a time and never adds a third (with two nodes under required
    anti-affinity, a surge pod could not be placed)."""
    template["spec"]["affinity"] = {
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"name": spec.name}}, "topologyKey": "kubernetes.io/hostname"}
            ]
        }
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(spec, spec.name, labels=labels(spec)),
        "spec": {
            "replicas": 2,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
            "selector": {"matchLabels": {"name": spec.name}},
            "template": template,
        },
    }


def disruption_budget(spec: RouterSpec) -> Document:
    """A drain takes one replica at a time: the other holds, or takes, the address."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(spec, spec.name, labels=labels(spec)),
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"name": spec.name}}},
    }


def service(spec: RouterSpec, config: RouterConfig) -> Document | None:
    ports: list[Document] = []
    seen: set[tuple[str, int]] = set()
    for mapping in config.destinations.mappings:
        key = (mapping.protocol, mapping.port)
        if key in seen:  # the same port for IPv4 and IPv6 is one Service port
            continue
        seen.add(key)
        ports.append(
            {
                "name": f"{mapping.protocol}-{mapping.port}",
                "port": mapping.port,
                "protocol": mapping.protocol.upper(),
                "targetPort": mapping.port,
            }
        )
    if not ports:
        return None  # a Service needs a port; with only a fallback the user picks them
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, spec.name, labels=labels(spec)),
        "spec": {"selector": {"name": spec.name}, "ports": ports},
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the destination rules) as literal blocks, as a person writes them."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value.rstrip("\n") or value.endswith("\n") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(docs: list[Document], fallback: bool = False, header: str = "") -> str:
    text = yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=4096)
    return header + _comment(text, fallback)


def _comment(text: str, fallback: bool) -> str:
    """Put each explanation above the line it explains."""
    out: list[str] = []
    kind = ""
    for line in text.splitlines():
        if line.startswith("kind: "):
            kind = line[len("kind: ") :]
        stripped = line.strip().lstrip("- ")
        note = None
        if stripped == "privileged: true":
            note = PRIVILEGED_WHY
        elif stripped == "capabilities:" and "allowPrivilegeEscalation" not in out[-1]:
            # The wait container only drops capabilities; the router's grant needs a why.
            note = CAPABILITIES_WHY
        elif stripped == "sysctls:":
            note = SYSCTLS_WHY
        elif kind == "Service" and line == "  ports:" and fallback:
            note = FALLBACK_WHY
        if note:
            indent = " " * (len(line) - len(line.lstrip(" -")))
            out.extend(f"{indent}# {n}" for n in note.splitlines())
        out.append(line)
    return "\n".join(out) + "\n"
