"""The plugin's entry point: CNI_* environment and JSON config in, the spec's JSON out.

ADD creates the macvlan in the pod (and, with `egressRouter`, sets the router up); a failure
at any step after the link exists deletes it again, so a failed ADD leaves nothing behind.
DEL is idempotent: a missing interface or namespace is success. CHECK compares the pod with
the `prevResult` of ADD. VERSION lists the spec versions whose result format is written.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..ifname import interface_name_problem
from . import link, router
from .errors import (
    CHECK_FAILURE,
    DECODING_FAILURE,
    INCOMPATIBLE_VERSION,
    INTERNAL_FAILURE,
    INVALID_CONFIG,
    INVALID_ENVIRONMENT,
    IO_FAILURE,
    UNSUPPORTED_FIELD,
    CniError,
)

if TYPE_CHECKING:
    from ..model import RouterConfig

SPEC_VERSION = "1.0.0"
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")


def main() -> int:
    version = SPEC_VERSION
    try:
        command = os.environ.get("CNI_COMMAND", "")
        if command == "VERSION":
            _write({"cniVersion": SPEC_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)})
            return 0
        handlers = {"ADD": add, "DEL": delete, "CHECK": check}
        if command not in handlers:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_COMMAND {command!r} is not ADD, DEL, CHECK or VERSION")
        conf = _read_config()
        version = conf["cniVersion"]
        result = handlers[command](conf, os.environ)
        if result is not None:
            _write(result)
        return 0
    except CniError as error:
        _write(error.to_json(version))
        return 1
    except Exception as error:  # the runtime wants the spec's error object, never a traceback
        frame = traceback.extract_tb(error.__traceback__)[-1:]
        where = f"at {frame[0].filename}:{frame[0].lineno} in {frame[0].name}" if frame else ""
        _write(CniError(INTERNAL_FAILURE, f"unexpected error: {type(error).__name__}: {error}", where).to_json(version))
        return 1


def _write(document: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    sys.stdout.flush()


def _read_config() -> dict[str, Any]:
    try:
        text = sys.stdin.read()
    except OSError as error:
        raise CniError(IO_FAILURE, f"failed to read the network configuration: {error}") from None
    except UnicodeDecodeError as error:
        raise CniError(DECODING_FAILURE, "failed to decode the network configuration: not UTF-8", str(error)) from None
    try:
        conf = json.loads(text)
    except ValueError as error:
        raise CniError(DECODING_FAILURE, f"failed to decode the network configuration: {error}") from None
    if not isinstance(conf, dict):
        raise CniError(DECODING_FAILURE, "the network configuration is not a JSON object")
    version = conf.get("cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version!r} is not supported",
                       f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    conf.setdefault("mode", "bridge")
    if conf["mode"] not in link.MACVLAN_MODES:
        raise CniError(INVALID_CONFIG, f"mode {conf['mode']!r} is not one of {', '.join(link.MACVLAN_MODES)}")
    mtu = conf.get("mtu", 0)
    if not isinstance(mtu, int) or isinstance(mtu, bool) or not (mtu == 0 or 68 <= mtu <= 65535):
        raise CniError(INVALID_CONFIG, f"mtu {mtu!r} is not an integer in 68-65535")
    if "forwarding" in conf and not isinstance(conf["forwarding"], bool):
        # "false" is a non-empty string, and would turn forwarding on.
        raise CniError(INVALID_CONFIG, f"forwarding {conf['forwarding']!r} is not a boolean (true or false)")
    if conf.get("master") is not None and interface_name_problem(conf["master"]):
        raise CniError(INVALID_CONFIG, f"master {interface_name_problem(conf['master'])}")
    ipam = conf.get("ipam")
    if isinstance(ipam, dict) and ipam.get("type"):
        # The address is the router's reserved one, set by the router itself (or by
        # `egressRouter`): an IPAM plugin would hand out a second one.
        raise CniError(UNSUPPORTED_FIELD, f"ipam type {ipam['type']!r} is not supported; leave ipam empty")
    return conf


def _args(env: Mapping[str, str], need_netns: bool) -> tuple[str, str]:
    missing = [v for v in ("CNI_CONTAINERID", "CNI_IFNAME") if not env.get(v)]
    if need_netns and not env.get("CNI_NETNS"):
        missing.append("CNI_NETNS")
    if missing:
        raise CniError(INVALID_ENVIRONMENT, f"missing {', '.join(missing)}")
    ifname = env["CNI_IFNAME"]
    problem = interface_name_problem(ifname)
    if problem is not None:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_IFNAME {problem}")
    return env.get("CNI_NETNS", ""), ifname


def add(conf: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    netns, ifname = _args(env, need_netns=True)
    if not os.path.exists(netns):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS {netns} does not exist")
    settings = router.environment(conf["egressRouter"], ifname) if "egressRouter" in conf else None
    master = conf.get("master") or link.default_interface()
    mtu = conf.get("mtu") or link.mtu_of(master)
    link.create(master, netns, ifname, conf["mode"], mtu)
    try:
        link.set_up(netns, ifname)
        if conf.get("forwarding") is True:
            link.enable_forwarding(netns, ifname)
        if settings is not None:
            router.set_up(netns, settings.env)
        created = link.show(netns, ifname)
    except BaseException:
        # Roll back: a failed ADD must leave neither the interface nor the router's table.
        if settings is not None:
            router.tear_down(netns)
        link.delete(netns, ifname)
        raise
    return result(conf, netns, created, settings.config if settings else None)


def result(
    conf: dict[str, Any], netns: str, created: link.Link | None, config: RouterConfig | None
) -> dict[str, Any]:
    interface = {"name": created.name if created else "", "mac": created.mac if created else "", "sandbox": netns}
    out: dict[str, Any] = {"cniVersion": conf["cniVersion"], "interfaces": [interface]}
    ips: list[dict[str, Any]] = []
    out["ips"] = ips
    if config is None:
        return out
    for source in config.sources:
        entry: dict[str, Any] = {"address": str(source), "interface": 0}
        gateway = config.gateway(source.version)
        if gateway is not None:
            entry["gateway"] = str(gateway)
        if conf["cniVersion"] != "1.0.0":
            entry["version"] = str(source.version)  # dropped from the result in 1.0.0
        ips.append(entry)
    return out


def delete(conf: dict[str, Any], env: Mapping[str, str]) -> None:
    netns, ifname = _args(env, need_netns=False)
    if not netns or not os.path.exists(netns):
        return None  # the pod's namespace is gone, and with it everything this plugin made
    if "egressRouter" in conf:
        router.tear_down(netns)
    link.delete(netns, ifname)
    return None


def check(conf: dict[str, Any], env: Mapping[str, str]) -> None:
    netns, ifname = _args(env, need_netns=True)
    previous = conf.get("prevResult")
    if not isinstance(previous, dict):
        raise CniError(INVALID_CONFIG, "CHECK needs prevResult, the result of ADD")
    if not os.path.exists(netns):
        raise CniError(CHECK_FAILURE, f"CNI_NETNS {netns} does not exist")
    found = link.show(netns, ifname)
    if found is None:
        raise CniError(CHECK_FAILURE, f"interface {ifname} is missing from the pod")
    if found.kind != "macvlan" or found.mode != conf["mode"]:
        raise CniError(CHECK_FAILURE, f"interface {ifname} is {found.kind} mode {found.mode or '?'}, not macvlan mode {conf['mode']}")
    if not found.up:
        raise CniError(CHECK_FAILURE, f"interface {ifname} is down")
    expected = [i for i in previous.get("interfaces", []) if isinstance(i, dict) and i.get("name") == ifname]
    if expected and expected[0].get("mac") and expected[0]["mac"] != found.mac:
        raise CniError(CHECK_FAILURE, f"interface {ifname} has MAC {found.mac}, not {expected[0]['mac']} as ADD made it")
    if "egressRouter" in conf and not router.has_table(netns):
        raise CniError(CHECK_FAILURE, "the router's nftables table inet egress_router is missing from the pod")
    return None


if __name__ == "__main__":
    raise SystemExit(main())
