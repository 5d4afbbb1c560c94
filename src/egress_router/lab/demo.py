"""The demo: the seed's example, end to end, on this machine (`make demo`, as root).

Builds the lab (docs/lab.md), runs the router once in `init` mode with the seed's four rules,
shows what it put in the kernel, then makes one connection per rule from the client pod and
prints the source address each external server saw. Removes the lab again however it ends
(success, failure, Ctrl-C, SIGTERM). Exits 1 if any connection did not do what the seed says.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from types import FrameType

from . import addresses as A
from .netns import sweep_stale
from .probe import Probe
from .topology import Lab

RULE_WORDS = {
    80: 'seed line 1, "80   tcp 203.0.113.25"',
    8080: 'seed line 2, "8080 tcp 203.0.113.26 80"',
    8443: 'seed line 3, "8443 tcp 203.0.113.26 443"',
    5000: 'seed line 4, "203.0.113.27": the fallback for any other port',
}


def say(text: str = "") -> None:
    print(text, flush=True)


def main() -> int:
    problem = cannot_run()
    if problem:
        say(f"demo: {problem}")
        return 1
    # SIGTERM (e.g. from a CI timeout) takes the same way out as Ctrl-C: through the `with`.
    signal.signal(signal.SIGTERM, _interrupt)
    swept = sweep_stale()
    if swept:
        say(f"(removed {len(swept)} namespaces left behind by an earlier run that died)")
    try:
        with Lab() as lab:
            return run(lab)
    except KeyboardInterrupt:
        say("\ninterrupted: the lab has been removed")
        return 130


def cannot_run() -> str | None:
    if os.geteuid() != 0:
        return "needs root (it creates network namespaces): run it as root, e.g. sudo make demo"
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    if missing:
        return f"needs {' and '.join(missing)} (apt-get install iproute2 nftables)"
    return None


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(lab: Lab) -> int:
    say("egress-router demo: the OpenShift seed's redirect example, on this machine\n")
    say(f"Built the lab in network namespaces {lab.prefix}*:")
    say(f"  client pod {A.CLIENT_IP} -> router pod eth0 {A.ROUTER_IP}")
    say(f"  router pod macvlan0 (on the node's NIC) -> LAN gateway {A.GATEWAY} -> outside")
    say(f"  external servers {', '.join(A.EXTERNAL)}; the gateway has no route back to the pods")
    servers = sorted({(address, port, "tcp") for _, _, address, port in A.SEED_EXPECTATIONS})
    lab.serve(servers)
    say("  each server answers with the source address it sees\n")

    env = A.seed_env("init")
    say("Running the router (python -m egress_router) in the router pod with:")
    for name in ("EGRESS_SOURCE", "EGRESS_GATEWAY", "EGRESS_ROUTER_MODE"):
        say(f"  {name}={env[name]}")
    say("  EGRESS_DESTINATION=")
    for line in env["EGRESS_DESTINATION"].splitlines():
        say(f"    {line}")
    started = time.perf_counter()
    done = lab.run_router(env)
    say(f"  -> exit status {done.returncode} after {time.perf_counter() - started:.2f}s")
    if done.returncode != 0:
        say(done.stderr.rstrip())
        return 1
    show_applied(lab)

    say("\nConnections from the client pod to the router pod:")
    failures = sum(not check_rule(lab, *expected) for expected in A.SEED_EXPECTATIONS)
    failures += not check_direct(lab)
    say()
    if failures:
        say(f"FAILED: {failures} check(s) did not do what the seed says")
        return 1
    say(f"All good: every connection reached its server from the reserved source {A.SOURCE}.")
    say("Removing the lab.")
    return 0


def show_applied(lab: Lab) -> None:
    say("\nWhat the router applied in its pod:")
    address = lab.exec("router", ["ip", "-br", "address", "show", "dev", "macvlan0"]).stdout.split()
    say(f"  macvlan0 {address[1] if len(address) > 1 else '?'}: {' '.join(address[2:3])}")
    for route in lab.exec("router", ["ip", "route", "show", "default"]).stdout.splitlines():
        say(f"  route {route.strip()}")
    say(f"  net.ipv4.ip_forward = {lab.sysctl('router', 'net/ipv4/ip_forward')} (it was 0)")
    say("  nftables table inet egress_router, the redirections as the kernel holds them:")
    for line in redirections(lab):
        say(f"    {line}")


def redirections(lab: Lab) -> list[str]:
    """The maps' elements and the fallback rule, read back from the kernel."""
    listing = lab.exec("router", ["nft", "-j", "list", "table", "inet", "egress_router"]).stdout
    out = []
    for item in json.loads(listing).get("nftables", []):
        spec = item.get("map")
        if not spec or spec.get("map") == "verdict":
            continue
        for key, value in spec.get("elem", []):
            port = key["elem"]["val"] if isinstance(key, dict) else key
            target = " port ".join(str(v) for v in value.get("concat", [value]))
            out.append(f"map {spec['name']}: {port} -> {target}")
    text = lab.exec(
        "router", ["nft", "list", "chain", "inet", "egress_router", "prerouting"]
    ).stdout
    out += [
        f"rule: {line.strip()}"
        for line in text.splitlines()
        if "dnat" in line and "map" not in line
    ]
    return out


def check_rule(lab: Lab, port: int, protocol: str, address: str, remote_port: int) -> bool:
    probe = lab.connect(port, protocol)
    good = probe.ok and probe.server == (address, remote_port) and probe.source == A.SOURCE
    target = f"router:{port}/{protocol}"
    say(f"  client -> {target:<22} => {probe}  [{'ok' if good else 'WRONG'}]")
    say(f"      {RULE_WORDS.get(port, '')}: expected {address}:{remote_port}")
    return good


def check_direct(lab: Lab) -> bool:
    """Without the router the outside is out of reach: the router forwards only what a rule
    redirected, and the gateway has no route back to the pod network anyway."""
    probe: Probe = lab.connect(80, address=A.EXTERNAL[0], timeout=1.0)
    good = not probe.ok
    target = f"{A.EXTERNAL[0]}:80/tcp"
    say(f"  client -> {target:<22} => {probe}  [{'ok' if good else 'WRONG'}]")
    say("      directly, not through a rule: the router must not forward it")
    return good


if __name__ == "__main__":
    sys.exit(main())
