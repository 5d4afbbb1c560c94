"""The HA environment: EGRESS_ROUTER_HA, EGRESS_ROUTER_VRRP_ID, EGRESS_ROUTER_VRRP_PEERS.

Validated strictly, one `Problem` per wrong variable, as `egress_router.config` does for the
rest of the contract. Pure.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from ipaddress import IPv4Address
from typing import NamedTuple

from ..config import Problems
from ..errors import Problem
from ..model import Mode, RouterConfig

HA = "EGRESS_ROUTER_HA"
VRRP_ID = "EGRESS_ROUTER_VRRP_ID"
VRRP_PEERS = "EGRESS_ROUTER_VRRP_PEERS"
HA_MODES = ("vrrp",)
MAX_PEERS = 16
# Internal, for the lab: where keepalived's files go (a folder of its own inside it), instead
# of /run. Not part of the contract.
RUNTIME_DIR_VARIABLE = "EGRESS_ROUTER_HA_RUNTIME_DIR"


class HaConfig(NamedTuple):
    """What the HA variables say, validated."""

    vrid: int
    peers: tuple[IPv4Address, ...] = ()  # unicast VRRP peers; () for multicast
    runtime_dir: str | None = None  # None: /run (RUNTIME_DIR_VARIABLE)

    @property
    def instance(self) -> str:
        return f"egress_router_{self.vrid}"


def load_ha(environ: Mapping[str, str], config: RouterConfig) -> HaConfig:
    """The HA settings of `environ` for `config`; raises `ConfigError` with its problems
    (the first `config.MAX_PROBLEMS`, the rest counted, as for the rest of the environment)."""
    problems = Problems()  # a long list of wrong peers: the first few shown, the rest counted
    mode = environ.get(HA, "").strip().lower()
    if mode not in HA_MODES:
        problems.add(Problem(HA, f"must be {' or '.join(HA_MODES)}, not {environ.get(HA, '')!r}"))
    if config.mode not in (Mode.LEGACY, Mode.UNIT_TEST):
        problems.add(Problem(HA, f"needs EGRESS_ROUTER_MODE=legacy, not {config.mode.value}"))
    vrid = 0
    text = environ.get(VRRP_ID)
    if text is None or not text.strip():
        problems.add(Problem(VRRP_ID, "is not set: HA needs a VRRP router id (1-255) unique on the LAN"))
    else:
        try:
            vrid = int(text.strip(), 10)
        except ValueError:
            problems.add(Problem(VRRP_ID, f"must be a number from 1 to 255, not {text.strip()!r}"))
        else:
            if not 1 <= vrid <= 255:
                problems.add(Problem(VRRP_ID, f"must be from 1 to 255, not {vrid}"))
    peers = _peers(environ.get(VRRP_PEERS, ""), problems)
    if problems:
        raise problems.error()
    return HaConfig(vrid, peers, environ.get(RUNTIME_DIR_VARIABLE) or None)


def _peers(text: str, problems: Problems) -> tuple[IPv4Address, ...]:
    found: list[IPv4Address] = []
    for item in text.replace(",", " ").split():
        try:
            address = ipaddress.ip_address(item)
        except ValueError:
            problems.add(Problem(VRRP_PEERS, f"is not an IPv4 address: {item!r}"))
            continue
        if not isinstance(address, IPv4Address):
            problems.add(Problem(VRRP_PEERS, f"must be IPv4 addresses (VRRP runs over IPv4 here): {item!r}"))
        elif address.is_multicast or address.is_unspecified or address.is_loopback:
            problems.add(Problem(VRRP_PEERS, f"is not a unicast address: {item!r}"))
        elif address in found:
            problems.add(Problem(VRRP_PEERS, f"names {item} twice"))
        else:
            found.append(address)
    if len(found) > MAX_PEERS:
        problems.add(Problem(VRRP_PEERS, f"names {len(found)} peers; at most {MAX_PEERS}"))
    return tuple(found)
