"""`egress-router manifests`: ready-to-apply YAML for a router, from flags, a spec file or an
`EgressRouter` resource. Everything is validated by the core before a line is written, so the
YAML never holds a rule that the init container would refuse."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Mapping
from typing import Any

import yaml

from .. import __version__
from ..cni.link import MACVLAN_MODES
from ..errors import ConfigError, Problem
from . import egressrouter
from .render import documents, to_yaml
from .spec import CNI_TYPES, CONFIG_VIA, FLAVORS, MODES, RouterSpec, check
from .usage import Parser, UsageError, report

DESCRIPTION = """\
Write the Kubernetes/OpenShift YAML for an egress router to stdout: a ConfigMap with the
destinations, the router Pod (or a one-replica Deployment), a Service exposing each mapped
port and, for --flavor multus, the NetworkAttachmentDefinition that creates macvlan0.
Apply it with: egress-router manifests ... | kubectl apply -f -"""

# Spec file keys -> RouterSpec fields. Lists are accepted where a flag is repeatable.
SPEC_KEYS = {
    "name": "name",
    "namespace": "namespace",
    "image": "image",
    "waitImage": "wait_image",
    "source": "sources",
    "gateway": "gateways",
    "destinations": "destinations",
    "flavor": "flavor",
    "parent": "parent",
    "macvlanMode": "macvlan_mode",
    "deployment": "deployment",
    "mode": "mode",
    "configVia": "config_via",
    "cniType": "cni_type",
    "ha": "ha",
    "vrrpId": "vrrp_id",
}
LIST_FIELDS = {"sources", "gateways", "destinations"}


def parser() -> Parser:
    p = Parser(prog="egress-router manifests", description=DESCRIPTION,
               formatter_class=lambda prog: _Formatter(prog, max_help_position=30))
    p.add_argument("--from", dest="source_file", metavar="FILE",
                   help="a spec file (these flags' long names in camelCase) or an EgressRouter resource; flags override it")
    p.add_argument("--name", help="Pod/Deployment and Service name (default egress-router)")
    p.add_argument("--namespace", help="namespace of every object (default: none, kubectl's current)")
    p.add_argument("--image", help=f"the router image (default: {RouterSpec.image})")
    p.add_argument("--wait-image", help=f"image of the long-lived container (default: {RouterSpec.wait_image})")
    p.add_argument("--source", action="append", metavar="ADDR[/LEN]",
                   help="EGRESS_SOURCE: the reserved address; once per family")
    p.add_argument("--gateway", action="append", metavar="ADDR", help="EGRESS_GATEWAY; once per family")
    p.add_argument("--destination", action="append", metavar="RULE",
                   help="one EGRESS_DESTINATION rule, e.g. '8080 tcp 203.0.113.26 80'; repeat, fallback last")
    p.add_argument("--flavor", choices=FLAVORS, help="openshift: the assign-macvlan annotation (default); "
                   "multus: a NetworkAttachmentDefinition")
    p.add_argument("--parent", metavar="NIC", help="the node NIC for the macvlan (default: the node's default one)")
    p.add_argument("--macvlan-mode", choices=MACVLAN_MODES, help="multus only (default bridge)")
    p.add_argument("--cni-type", choices=CNI_TYPES,
                   help="multus: the plugin the attachment names (default egress-router-cni)")
    p.add_argument("--deployment", action="store_true", default=None,
                   help="a Deployment with one replica (Recreate) instead of a bare Pod")
    p.add_argument("--mode", choices=MODES,
                   help="init: an init container sets up and exits, a pause container keeps the pod (default, "
                   "the seed's layout); legacy: the router is the long-lived container, with live reload, "
                   "/healthz, /readyz and /metrics")
    p.add_argument("--config-via", choices=CONFIG_VIA,
                   help="env: EGRESS_DESTINATION from the ConfigMap (default in init mode, works with the OpenShift "
                   "image too); file: the ConfigMap mounted, EGRESS_DESTINATION_FILE (default in legacy mode: "
                   "changes apply live)")
    p.add_argument("--ha", action="store_true", default=None,
                   help="high availability (docs/ha.md): a Deployment of 2 replicas on different nodes sharing "
                   "the address, elected by VRRP; implies --mode legacy")
    p.add_argument("--vrrp-id", type=int, metavar="1-255",
                   help="with --ha: EGRESS_ROUTER_VRRP_ID, unique among the VRRP routers of the LAN")
    return p


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def main(args: list[str], env: Mapping[str, str]) -> int:
    try:
        options = parser().parse_args(args)
        spec = RouterSpec()
        earlier, explained = load_file(options.source_file, spec) if options.source_file else ([], set())
        apply_flags(vars(options), spec)
        if spec.ha and options.mode is None and spec.mode == "init":
            spec.mode = "legacy"
        config = check(spec, earlier, explained)
    except (UsageError, ConfigError) as error:
        return report(error)
    if spec.flavor == "openshift" and spec.macvlan_mode != "bridge":
        sys.stderr.write(
            f"egress-router: warning: the assign-macvlan annotation cannot choose a macvlan mode; "
            f"{spec.macvlan_mode} is ignored (use --flavor multus)\n"
        )
    if not config.destinations.mappings:
        sys.stderr.write(
            "egress-router: warning: only a fallback: no Service is written, as a Service needs "
            "the ports that clients will use\n"
        )
    header = _comment_lines(f"Generated by egress-router {__version__}: egress-router manifests {shlex.join(args)}")
    sys.stdout.write(to_yaml(documents(spec, config), bool(config.destinations.fallbacks), header))
    return 0


def _comment_lines(text: str) -> str:
    """Every line a comment: an argument holding a newline (a file name may) must not put
    YAML of its own into the output."""
    return "".join(f"# {line}\n" for line in text.splitlines() or [""])


def apply_flags(options: dict[str, Any], spec: RouterSpec) -> None:
    for option, attribute in (("source", "sources"), ("gateway", "gateways")):
        if options[option]:
            # `--source a,b` and `--source a --source b` both work, as in EGRESS_SOURCE.
            setattr(spec, attribute, [i.strip() for v in options[option] for i in v.split(",")])
    if options["destination"]:
        spec.destinations = list(options["destination"])
    for option in ("name", "namespace", "image", "wait_image", "flavor", "parent", "macvlan_mode",
                   "deployment", "mode", "config_via", "cni_type", "ha", "vrrp_id"):
        if options[option] is not None:
            setattr(spec, option, options[option])
    if spec.ha and options["mode"] is None and spec.mode == "init":
        spec.mode = "legacy"  # HA is a mode of legacy


def load_file(path: str, spec: RouterSpec) -> tuple[list[Problem], set[str]]:
    """Fill `spec` from a spec file or an EgressRouter; return the problems found in it and the
    fields they leave unset, to be reported with `check`'s. Raises `ConfigError` only when
    the file cannot be read at all."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
    except OSError as error:
        raise ConfigError([Problem("--from", f"cannot read {path}: {error.strerror or error}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([Problem("--from", f"{path} is not UTF-8 text")]) from None
    except yaml.YAMLError as error:
        raise ConfigError([Problem("--from", f"{path} is not YAML: {_one_line(error)}")]) from None
    if egressrouter.is_egress_router(document):
        found = egressrouter.to_spec(document, spec)
        # OVN-Kubernetes attaches the macvlan through its CNI plugin: multus is the nearest
        # flavour, unless --flavor says otherwise.
        spec.flavor = "multus"
        return found
    if not isinstance(document, dict):
        raise ConfigError([Problem("--from", f"{path} is neither a spec (a mapping) nor an EgressRouter")])
    problems = []
    explained: set[str] = set()
    for key, value in document.items():
        attribute = SPEC_KEYS.get(key)
        if attribute is None:
            problems.append(Problem(f"{path}: {key}", f"unknown key (valid: {', '.join(SPEC_KEYS)})"))
            continue
        expected = bool if attribute in ("deployment", "ha") else int if attribute == "vrrp_id" else str
        if attribute in LIST_FIELDS:
            items = value.splitlines() if attribute == "destinations" and isinstance(value, str) else value
            items = [items] if isinstance(items, str) else items
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                problems.append(Problem(f"{path}: {key}", "must be a string or a list of strings"))
                explained.add(attribute)
                continue
            value = [i for i in items if i.strip()] if attribute == "destinations" else items
        elif not isinstance(value, expected):
            problems.append(Problem(f"{path}: {key}", f"must be a {expected.__name__}"))
            continue
        setattr(spec, attribute, value)
    return problems, explained


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())
