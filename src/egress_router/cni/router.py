"""The router's own settings carried in the CNI config (`"egressRouter": {...}`).

With them the plugin does what the init container would: it validates with the core before
anything is created (a bad rule fails ADD with the core's messages and leaves nothing behind),
then runs `python -m egress_router` in `init` mode inside the pod's namespace (through nsenter),
so the very same code path as the init container sets the addresses, routes, sysctls and the
nftables table.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, NamedTuple

from ..schema import RULE_PRIORITIES, TABLE_FAMILY, TABLE_NAME
from .errors import INVALID_CONFIG, ROUTER_FAILURE, CniError
from .link import run

if TYPE_CHECKING:
    from ..model import RouterConfig

TABLE = (TABLE_FAMILY, TABLE_NAME)  # the one table the router owns
KEYS = {"source", "gateway", "destinations", "podInterface", "debug"}


class Settings(NamedTuple):
    env: dict[str, str]  # what `python -m egress_router` is run with
    config: RouterConfig  # the same, as the core validated it


def environment(settings: object, ifname: str) -> Settings:
    """The router's environment from the config object; raises `CniError` (code 7) if invalid."""
    if not isinstance(settings, dict):
        raise CniError(INVALID_CONFIG, "egressRouter must be an object")
    unknown = sorted(set(settings) - KEYS)
    if unknown:
        raise CniError(INVALID_CONFIG, f"egressRouter: unknown field(s) {', '.join(unknown)} (valid: {', '.join(sorted(KEYS))})")
    env = {
        "EGRESS_SOURCE": _joined(settings, "source", ","),
        "EGRESS_GATEWAY": _joined(settings, "gateway", ","),
        "EGRESS_DESTINATION": _joined(settings, "destinations", "\n"),
        "EGRESS_ROUTER_MODE": "init",
        "EGRESS_INTERFACE": ifname,
    }
    pod_interface = settings.get("podInterface")
    if pod_interface is not None:
        if not isinstance(pod_interface, str):
            raise CniError(INVALID_CONFIG, f"egressRouter.podInterface {pod_interface!r} must be a string")
        env["EGRESS_POD_INTERFACE"] = pod_interface
    debug = settings.get("debug", False)
    if not isinstance(debug, bool):
        raise CniError(INVALID_CONFIG, f"egressRouter.debug {debug!r} must be a boolean")  # "false" is truthy
    if debug:
        env["EGRESS_ROUTER_DEBUG"] = "1"
    # The pure core only: no subprocess, no socket, cheap to import on the plugin's path.
    from ..config import load_environment
    from ..errors import ConfigError

    try:
        config = load_environment(env)
    except ConfigError as error:
        raise CniError(INVALID_CONFIG, "invalid egressRouter settings", "; ".join(map(str, error.problems))) from None
    return Settings(env, config)


def _joined(settings: dict[str, Any], key: str, separator: str) -> str:
    value = settings.get(key)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return separator.join(value)
    if isinstance(value, str):
        return value
    raise CniError(INVALID_CONFIG, f"egressRouter.{key} must be a string or a list of strings")


def set_up(netns: str, env: dict[str, str]) -> None:
    full = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **env}
    done = run([sys.executable, "-m", "egress_router"], netns, full)
    if done.returncode != 0:
        lines = [line.removeprefix("egress-router: ") for line in done.stderr.splitlines() if line.strip()]
        raise CniError(ROUTER_FAILURE, "failed to set up the egress router in the pod", "; ".join(lines[-5:]))


def tear_down(netns: str) -> None:
    """Remove the router's table and policy rules; its addresses and routes went with the
    interface."""
    if os.path.exists(netns):
        run(["nft", "delete", "table", *TABLE], netns)  # absent already: nothing to do
        for family in ("-4", "-6"):
            for priority in RULE_PRIORITIES:
                run(["ip", family, "rule", "del", "priority", str(priority)], netns)


def has_table(netns: str) -> bool:
    return run(["nft", "list", "table", *TABLE], netns).returncode == 0
