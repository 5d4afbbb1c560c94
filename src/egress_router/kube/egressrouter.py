"""The OVN-Kubernetes `EgressRouter` resource (network.operator.openshift.io/v1) as input.

Every field of a Redirect-mode resource is honoured: the addresses and gateways, each redirect
rule (with `targetPort` when it differs), the macvlan's mode and master, and `fallbackIP`,
which becomes the last destination line (OVN-Kubernetes' own CNI plugin drops it silently).
Only the shape is checked here; the values are checked by the core, like any other input, and
`manifests` reports the problems of both together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..cni.link import MACVLAN_MODES
from ..errors import Problem
from .spec import RouterSpec

API_GROUP = "network.operator.openshift.io"
API_VERSION = f"{API_GROUP}/v1"
KIND = "EgressRouter"


def is_egress_router(document: object) -> bool:
    return isinstance(document, dict) and document.get("kind") == KIND


Bad = Callable[[str, str], None]


def to_spec(document: dict[str, Any], spec: RouterSpec) -> tuple[list[Problem], set[str]]:
    """Fill `spec` from the resource, as far as its shape allows.

    Returns the problems with the shape, naming each bad field, and the `RouterSpec` fields
    whose absence they explain (so that `check` does not also call them missing). Nothing is
    raised: the caller reports these together with the core's verdict on the rest."""
    problems: list[Problem] = []
    explained: set[str] = set()

    def bad(where: str, message: str) -> None:
        problems.append(Problem(f"{KIND} {where}", message))
        for prefix, attribute in (("spec.addresses", "sources"), ("spec.redirect", "destinations")):
            if where.startswith(prefix):
                explained.add(attribute)
        if where.startswith("spec.addresses") and not where.endswith(".ip"):
            explained.add("gateways")

    if document.get("apiVersion") != API_VERSION:
        bad("apiVersion", f"{document.get('apiVersion')!r} is not {API_VERSION}")
    meta = _dict(document.get("metadata"))
    if isinstance(meta.get("name"), str):
        spec.name = meta["name"]
    if isinstance(meta.get("namespace"), str):
        spec.namespace = meta["namespace"]
    body = _dict(document.get("spec"))
    mode = body.get("mode", "Redirect")
    if mode != "Redirect":
        bad("spec.mode", f"{mode!r}: only Redirect is supported (HTTPProxy and DNSProxy are not)")
    _addresses(body.get("addresses"), spec, bad)
    _rules(_dict(body.get("redirect")), spec, bad)
    _interface(_dict(body.get("networkInterface")), spec, bad)
    return problems, explained


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True is an int to Python


def _addresses(items: object, spec: RouterSpec, bad: Bad) -> None:
    if not isinstance(items, list) or not items:
        bad("spec.addresses", "needs one entry (ip with prefix length, and gateway)")
        return
    for index, item in enumerate(items):
        entry = _dict(item)
        ip, gateway = entry.get("ip"), entry.get("gateway")
        if not isinstance(ip, str):
            bad(f"spec.addresses[{index}].ip", "is required (e.g. 192.168.12.99/24)")
        else:
            spec.sources.append(ip)
        if not isinstance(gateway, str):
            bad(f"spec.addresses[{index}].gateway", "is required")
        elif gateway not in spec.gateways:
            spec.gateways.append(gateway)


def _rules(redirect: dict[str, Any], spec: RouterSpec, bad: Bad) -> None:
    rules = redirect.get("redirectRules") or []
    if not isinstance(rules, list):
        bad("spec.redirect.redirectRules", "is not a list")
        rules = []
    for index, item in enumerate(rules):
        where = f"spec.redirect.redirectRules[{index}]"
        rule = _dict(item)
        address, port = rule.get("destinationIP"), rule.get("port")
        protocol = rule.get("protocol", "TCP")
        target = rule.get("targetPort")
        if not isinstance(address, str) or not _integer(port) or not isinstance(protocol, str):
            bad(where, "needs destinationIP (string), port (integer) and protocol (TCP, UDP or SCTP)")
            continue
        if target is not None and not _integer(target):
            bad(f"{where}.targetPort", f"{target!r} is not an integer")
            continue
        line = f"{port} {protocol.lower()} {address}"
        spec.destinations.append(line if target in (None, port) else f"{line} {target}")
    fallback = redirect.get("fallbackIP")
    if fallback is not None:
        if isinstance(fallback, str):
            spec.destinations.append(fallback)
        else:
            bad("spec.redirect.fallbackIP", f"{fallback!r} is not an address")
    if not rules and fallback is None:
        bad("spec.redirect", "has neither redirectRules nor fallbackIP")


def _interface(interface: dict[str, Any], spec: RouterSpec, bad: Bad) -> None:
    macvlan = _dict(interface.get("macvlan"))
    mode = macvlan.get("mode")
    if mode is not None:
        # The resource spells the modes capitalised; the kernel (and `ip`) wants lower case.
        if not isinstance(mode, str) or mode.lower() not in MACVLAN_MODES:
            bad("spec.networkInterface.macvlan.mode", f"{mode!r} is not Bridge, Private, VEPA or Passthru")
        else:
            spec.macvlan_mode = mode.lower()
    master = macvlan.get("master")
    if master is not None:
        if isinstance(master, str) and master:
            spec.parent = master
        else:
            bad("spec.networkInterface.macvlan.master", f"{master!r} is not an interface name")


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
