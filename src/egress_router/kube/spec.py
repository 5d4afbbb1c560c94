"""What a user wants deployed, validated with the same core as the router itself.

`RouterSpec` is filled from flags, a small spec file or an `EgressRouter` resource; `check`
runs the core's validation on a synthetic environment so that `manifests` refuses exactly what
the init container would refuse, with the same messages.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from .. import __version__
from ..cni.link import MACVLAN_MODES
from ..config import DESTINATION, GATEWAY, MODE, SOURCE, load_environment, parse_interface_name
from ..errors import ConfigError, Problem
from ..model import RouterConfig

FLAVORS = ("openshift", "multus")
CONFIG_VIA = ("env", "file")
# init: the seed's layout, an init container that sets up and exits, and a pause container;
# legacy: the router itself is the long-lived container (live reload, health, metrics).
MODES = ("init", "legacy")
CNI_TYPES = ("egress-router-cni", "macvlan")

# The project publishes no image. This is the one `make image` builds: it runs as it is only
# where the node's runtime shares that storage (CRI-O beside podman, as root, on the node); a
# version tag, not :latest, so that the kubelet does not insist on pulling it. Anywhere else,
# push the image to a registry of your own and pass --image.
DEFAULT_IMAGE = f"localhost/egress-router:{__version__}"
# The long-lived container only keeps the pod (and its network namespace) alive, as the seed's
# ose-pod does; any pause image will do.
DEFAULT_WAIT_IMAGE = "registry.k8s.io/pause:3.10"


@dataclass
class RouterSpec:
    name: str = "egress-router"
    namespace: str | None = None
    image: str = DEFAULT_IMAGE
    wait_image: str = DEFAULT_WAIT_IMAGE
    sources: list[str] = field(default_factory=list)
    gateways: list[str] = field(default_factory=list)
    destinations: list[str] = field(default_factory=list)  # one rule per entry, in order
    flavor: str = "openshift"
    parent: str | None = None  # the node NIC the macvlan hangs off; None: the default one
    macvlan_mode: str = "bridge"
    deployment: bool = False
    mode: str = "init"
    config_via: str | None = None  # None: the mode's default (`via`)
    cni_type: str = "egress-router-cni"
    ha: bool = False  # two replicas sharing the address (docs/ha.md); legacy mode
    vrrp_id: int | None = None

    @property
    def via(self) -> str:
        """Where the rules come from: a legacy router watches the mounted ConfigMap's file."""
        if self.config_via is not None:
            return self.config_via
        return "file" if self.mode == "legacy" else "env"

    @property
    def destination_text(self) -> str:
        return "".join(f"{rule.strip()}\n" for rule in self.destinations)

    def environment(self) -> dict[str, str]:
        """The environment the router container will see (destinations inline)."""
        env = {
            SOURCE: ",".join(self.sources),
            GATEWAY: ",".join(self.gateways),
            DESTINATION: self.destination_text,
            MODE: self.mode,
        }
        return {**env, **self.ha_environment()}

    def ha_environment(self) -> dict[str, str]:
        if not self.ha:
            return {}
        return {"EGRESS_ROUTER_HA": "vrrp", "EGRESS_ROUTER_VRRP_ID": "" if self.vrrp_id is None else str(self.vrrp_id)}


def check(spec: RouterSpec, earlier: Sequence[Problem] = (), explained: Collection[str] = ()) -> RouterConfig:
    """The core's verdict on the spec plus the Kubernetes-side choices; raises `ConfigError`
    with every problem, those found `earlier` in the input file first. `explained` names the
    fields whose absence an earlier problem already explains."""
    problems: list[Problem] = list(earlier)
    _choice(problems, "--flavor", spec.flavor, FLAVORS)
    _choice(problems, "--macvlan-mode", spec.macvlan_mode, MACVLAN_MODES)
    _choice(problems, "--mode", spec.mode, MODES)
    _choice(problems, "--config-via", spec.via, CONFIG_VIA)
    _choice(problems, "--cni-type", spec.cni_type, CNI_TYPES)
    if not _dns_label(spec.name) or len(spec.name) > 40:
        # 40 leaves room for the suffixes of the ConfigMap and the attachment.
        problems.append(Problem("--name", f"{spec.name!r} is not a DNS label of at most 40 characters"))
    if spec.namespace is not None and not _dns_label(spec.namespace):
        problems.append(Problem("--namespace", f"{spec.namespace!r} is not a DNS label"))
    if spec.parent is not None:
        try:
            parse_interface_name(spec.parent)
        except ValueError as error:
            problems.append(Problem("--parent", str(error)))
    for flag, image in (("--image", spec.image), ("--wait-image", spec.wait_image)):
        if not image or any(c.isspace() or not c.isprintable() for c in image):
            problems.append(Problem(flag, f"{image!r} is not an image reference (no spaces or control characters)"))
    if not spec.sources and "sources" not in explained:
        problems.append(Problem("--source", "is required (the reserved address, e.g. 192.0.2.99/24)"))
    if not spec.gateways and "gateways" not in explained:
        problems.append(Problem("--gateway", "is required (the node's default gateway)"))
    if not spec.destinations and "destinations" not in explained:
        problems.append(Problem("--destination", "give at least one rule (or a fallback address)"))
    for rule in spec.destinations:
        if "\n" in rule.strip():
            problems.append(Problem("--destination", f"one rule per flag: {rule!r}"))
    if spec.ha and spec.mode != "legacy":
        problems.append(Problem("--ha", "needs --mode legacy (the router must stay to follow the election)"))
    if spec.ha and spec.vrrp_id is None:
        problems.append(Problem("--vrrp-id", "is required with --ha: a VRRP router id (1-255) no other VRRP router on the LAN uses"))
    if not spec.ha and spec.vrrp_id is not None:
        problems.append(Problem("--vrrp-id", "is only for --ha"))
    config = None
    if spec.sources and spec.gateways and spec.destinations and spec.mode in MODES:
        try:
            config = load_environment(spec.environment())
            if spec.ha and spec.mode == "legacy" and spec.vrrp_id is not None:
                from ..ha.settings import load_ha

                load_ha(spec.environment(), config)
        except ConfigError as error:
            problems.extend(Problem("--vrrp-id", p.message) if p.variable == "EGRESS_ROUTER_VRRP_ID" else p
                            for p in error.problems)
    if problems or config is None:
        raise ConfigError(problems)
    return config


def _choice(problems: list[Problem], flag: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        problems.append(Problem(flag, f"{value!r} is not one of {', '.join(valid)}"))


def _dns_label(text: str) -> bool:
    """RFC 1123 label, as Kubernetes wants for names of Pods, Services and namespaces."""
    ok = text.isascii() and 0 < len(text) <= 63 and text[0].isalnum() and text[-1].isalnum()
    return ok and all(c.islower() or c.isdigit() or c == "-" for c in text)
