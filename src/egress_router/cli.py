"""The `egress-router` command.

Without arguments it is the container entrypoint and reads only the environment (the OpenShift
image's contract); with a subcommand it is a tool for people. This module is on every pod's
start-up path: it imports only what the chosen path needs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .errors import EXIT_FAILURE, EgressRouterError

if TYPE_CHECKING:  # names for annotations only: the modules load when a command needs them
    from .log import Log
    from .model import Destinations, RouterConfig
    from .reconcile import Router

HELP = """\
usage: egress-router                      run from the environment (the container entrypoint)
       egress-router validate [FILE...]   check destination files (or the environment)
       egress-router plan                 print the nftables script the environment gives
       egress-router status [--json]      the live state, read from the kernel
       egress-router manifests ...        Kubernetes/OpenShift YAML for a router
       egress-router lint FILE...         find what would break the router in existing YAML
       egress-router health [--ready]     ask this pod's legacy router /healthz (or /readyz)
       egress-router --help | --version

The egress router in redirect mode: connections made to this pod on a mapped port are sent to
an external server, with the pod's reserved address (EGRESS_SOURCE) as their source.

Environment (the OpenShift egress router image's contract, unchanged):
  EGRESS_SOURCE        reserved address on the node's LAN, optionally with a prefix length
                       (192.0.2.99/24). Without one, only the gateway is reachable on the LAN.
                       One IPv4 and one IPv6 address may be given, comma-separated.
  EGRESS_GATEWAY       the LAN's gateway (the node's default gateway); one per family.
  EGRESS_DESTINATION   redirection rules, one per line:
                         <port> <protocol> <ip>                 same port on <ip>
                         <port> <protocol> <ip> <remote_port>   another port on <ip>
                         <ip>                                   last line only: fallback for
                                                                every other port
                       <protocol> is tcp, udp or sctp. Blank lines and lines starting with #
                       are ignored. Without a fallback, other ports are refused. A DNS name
                       (api.example.com) may stand wherever an <ip> may.
  EGRESS_ROUTER_MODE   init       set up and exit (an init container)
                       legacy     set up and stay until SIGTERM/SIGINT (the default)
                       unit-test  print the plan, change nothing (needs no privileges)
                       http-proxy, dns-proxy   set up the network only, and exit
  EGRESS_ROUTER_DEBUG  when set (to anything), log every step.

Added by this project:
  EGRESS_DESTINATION_FILE  read the rules from this file instead (a mounted ConfigMap key),
                           at most 16 MiB; setting it and EGRESS_DESTINATION both is an error.
  EGRESS_INTERFACE         the egress (macvlan) interface; default macvlan0.
  EGRESS_POD_INTERFACE     the cluster-side interface; default eth0.
  EGRESS_ROUTER_HTTP_PORT  legacy mode's health and metrics port; default 9090, 0 for none.
                           This port is never redirected.
  EGRESS_ROUTER_LOG_FORMAT text (default) or json: one event per line on stderr.
  EGRESS_ROUTER_EXPECTED_CONNECTIONS  warn when the kernel's nf_conntrack_max is below
                           this many connections; default 16384.
  EGRESS_ROUTER_DNS_MIN_TTL, EGRESS_ROUTER_DNS_MAX_TTL  legacy mode looks a destination name
                           up again at its TTL, within these seconds; default 5 and 1800.
  EGRESS_ROUTER_HA         vrrp: high availability of legacy mode (docs/ha.md): replicas
                           with the same environment share the source address, elected by
                           VRRP (keepalived); unset: off.
  EGRESS_ROUTER_VRRP_ID    with HA: the VRRP router id, 1-255, unique on the LAN.
  EGRESS_ROUTER_VRRP_PEERS with HA: comma-separated IPv4 addresses of the other replicas' pod
                           interfaces, for unicast adverts where the LAN carries no multicast.

Exit status: 0 done, 1 the kernel or the pod could not be set up, 2 invalid configuration.
Each problem is reported on one line of stderr, naming the variable and the line.
"""


VALIDATE_USAGE = """\
usage: egress-router validate [FILE...]
Check destination files (the EGRESS_DESTINATION format), or, without FILE, the whole
environment. Prints one line per file; exit 2 with every problem, one per line."""

PLAN_USAGE = """\
usage: egress-router plan
Print what the environment asks for in a new pod: the network steps as comments, then the
nftables script the router runs for the table's structure, and the netlink batch that fills its
maps, in nft's syntax. Destination names are looked up now, through /etc/resolv.conf, and the
plan holds what they resolve to. Changes nothing and needs no privileges."""

VALIDATE_PROBLEMS = 1000  # listed per file; the rest are counted

# Commands that live in their own modules, imported only when asked for.
SUBCOMMANDS = {
    "status": (".status", "main"),
    "manifests": (".kube.manifests", "main"),
    "lint": (".kube.lint", "main"),
    "health": (".health", "main"),
}


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if environ is None else environ
    try:
        if not args:
            return run_environment(env)
        command, rest = args[0], args[1:]
        if command in ("-h", "--help", "help"):
            sys.stdout.write(HELP)
            return 0
        if command == "--version":
            from . import __version__

            print(f"egress-router {__version__}")
            return 0
        if command == "validate":
            return validate(rest, env)
        if command == "plan":
            return plan(rest, env)
        if command in SUBCOMMANDS:
            from importlib import import_module

            module, function = SUBCOMMANDS[command]
            return int(getattr(import_module(module, __package__), function)(rest, env))
        sys.stderr.write(f"egress-router: unknown command {command!r}; see egress-router --help\n")
        return 2
    except EgressRouterError as error:
        for line in error.lines():
            sys.stderr.write(f"egress-router: {line}\n")
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # noqa: BLE001 -- never a traceback for a user; debug shows one
        if env.get("EGRESS_ROUTER_DEBUG"):
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"egress-router: internal error: {type(error).__name__}: {error}\n")
        return EXIT_FAILURE


def entrypoint() -> None:
    """The `egress-router` command (and `python -m egress_router`): `main`, then out without
    Python's teardown. Once the work is done, freeing the objects of 10,000 rules one by one
    costs a pod start about 7 ms; the kernel takes the memory back at once. Only what is
    buffered in stdout and stderr needs writing, and is written first."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said
            code = code or EXIT_FAILURE
    os._exit(code)


def run_environment(env: Mapping[str, str]) -> int:
    from .config import load_environment
    from .log import Log
    from .model import Mode

    config = load_environment(env)
    ha = None
    if env.get("EGRESS_ROUTER_HA", "").strip():
        from .ha.settings import load_ha  # HA modules load only when HA is asked for

        ha = load_ha(env, config)
    log = Log(debug=config.debug, json=config.log_format == "json")
    if config.mode is Mode.UNIT_TEST:
        sys.stdout.write(render_plan(config))
        return 0
    from .preflight import check_capabilities, conntrack_warning

    check_capabilities()
    router = make_router(log)
    if config.mode is Mode.INIT and config.destinations.names:
        from .dns.start import resolve_once  # dnspython only for a configuration with names

        resolve_once(router, config, log)  # a name that does not resolve: exit 1, nothing applied
    controller = None
    if ha is not None:
        from .ha.controller import Controller

        controller = Controller(config, ha, router, log)
        controller.prepare()  # gate closed, plan without the address: start as the standby
    outcome = router.apply(config)
    if config.mode.redirects:
        warning = conntrack_warning(config.expected_connections)
        if warning:
            log.warning(warning)
    log.debug("set up", mode=config.mode.value, seconds=f"{outcome.seconds:.4f}")
    if config.mode is Mode.LEGACY:
        from .daemon import run

        return run(router, config, log, env, first=outcome, ha=controller)
    return 0


def make_router(log: Log) -> Router:
    from .neighbours.packet import PacketSocketAnnouncer
    from .network.rtnl import RtNetlink
    from .nft.cli import NftCli
    from .reconcile import Router

    return Router(nft=NftCli(), net=RtNetlink(), announcer=PacketSocketAnnouncer(), log=log)


def render_plan(config: RouterConfig, resolve: bool = False) -> str:
    """The plan for a new pod as a valid nft script: the network steps as comments, then the
    transaction. With `resolve`, the destination names are looked up now, and the plan holds
    their answers."""
    from .network.state import LinkState, NetState, converge
    from .nft import Transaction
    from .plan import DEFAULT_FACTS, build_plan, describe

    facts, said = DEFAULT_FACTS, list[str]()
    if resolve and config.destinations.names:
        from .dns.start import resolve_now

        answers, said = resolve_now(config)
        facts = facts._replace(answers=answers)
    plan = build_plan(config, facts)
    out = [f"# {line}\n" for line in [*describe(config), *said]]
    link = LinkState(config.egress_interface, False, False, "", 0)  # a new pod's: down, bare
    for step in converge(NetState(link), plan.network.wanted(link)):
        out.append(f"# {'' if str(step).startswith('sysctl') else 'ip '}{step}\n")
    # A new pod's: the structure as `nft -f` gets it, then the batch of elements, as nft's
    # syntax (together, a script nft also takes).
    tx = Transaction()
    tx.create_table(plan.table)
    out.append(str(tx))
    return "".join(out)


def validate(paths: list[str], env: Mapping[str, str]) -> int:
    from .config import (
        DESTINATION_FILE,
        load_environment,
        parse_destinations,
        read_destination_file,
    )
    from .errors import ConfigError, Problem

    if paths and paths[0] in ("-h", "--help"):
        print(VALIDATE_USAGE)
        return 0
    if not paths:
        config = load_environment(env)
        if env.get("EGRESS_ROUTER_HA", "").strip():
            from .ha.settings import load_ha

            load_ha(env, config)
        rules = config.destinations
        print(f"ok: environment: {len(rules.mappings)} rule(s), fallback {_fallback_words(rules)}{_names_words(rules)}")
        return 0
    problems, more = [], 0
    for path in paths:
        try:
            text = read_destination_file(path)
            # A person reading a terminal gets more of the problems than the daemon's log does.
            rules = parse_destinations(text, path, max_problems=VALIDATE_PROBLEMS)
        except ConfigError as error:
            # A file that cannot be read is named by its path, as its rules are.
            problems += [
                p if p.variable != DESTINATION_FILE else Problem(path, p.message)
                for p in error.problems
            ]
            more += error.more
            continue
        print(f"ok: {path}: {len(rules.mappings)} rule(s), fallback {_fallback_words(rules)}{_names_words(rules)}")
    if problems:
        raise ConfigError(problems, more)
    return 0


def _fallback_words(rules: Destinations) -> str:
    fallbacks = rules.fallbacks
    return ", ".join(map(str, fallbacks)) if fallbacks else "none (other ports refused)"


def _names_words(rules: Destinations) -> str:
    names = rules.names
    return f", names {', '.join(map(str, names))}" if names else ""


def plan(args: list[str], env: Mapping[str, str]) -> int:
    from .config import load_environment

    if args and args[0] in ("-h", "--help"):
        print(PLAN_USAGE)
        return 0
    if args:
        sys.stderr.write("egress-router: plan takes no arguments; it reads the environment\n")
        return 2
    sys.stdout.write(render_plan(load_environment(env), resolve=True))
    return 0
