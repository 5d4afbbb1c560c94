"""`legacy` mode: the router stays, follows its destination file, repairs drift, serves health.

One loop in the main thread, ticking every `TICK` seconds on `sigtimedwait` (so a signal ends
the wait at once): SIGTERM/SIGINT stop, SIGHUP reloads. Each tick polls the destination file;
every `CHECK_EVERY` seconds the kernel is compared with what was applied and repaired if
someone else changed it (EGRESS_ROUTER_CHECK_EVERY, an internal variable for the lab tests,
sets another period; it is not part of the contract). The HTTP server, when enabled, runs in a thread and only reads.

A reload applies only the difference (map elements when only the rules changed): conntrack
keeps the NAT of established connections, and mappings that did not change stay in the kernel
throughout. An invalid file is rejected as a whole and the old rules stay.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .config import load_environment
from .errors import ConfigError, EgressRouterError
from .log import Log
from .metrics import Stats, traffic
from .model import RouterConfig
from .network.state import differences
from .nft.listing import TableReader
from .reconcile import Outcome, Router
from .schema import TABLE_FAMILY, TABLE_NAME
from .watch import FileWatcher

if TYPE_CHECKING:
    from .ha.controller import Controller
    from .http import HealthServer

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
RELOAD_SIGNALS = {signal.SIGHUP}
WAKE_SIGNALS = {signal.SIGUSR1}  # HA: keepalived's state or the active changed (ha/controller.py)
TICK = 0.5  # the file is polled this often: a change is applied within about a second
CHECK_EVERY = 5.0
# Internal, for tests: another drift-check period in seconds (not part of the contract).
CHECK_EVERY_VARIABLE = "EGRESS_ROUTER_CHECK_EVERY"
# A few more announcements after start-up, for a LAN that missed the first one.
ANNOUNCE_AGAIN_AFTER = (1.0, 3.0)
LOGGED_PROBLEMS = 5  # of a rejected reload, in its one log event


@dataclass
class Daemon:
    router: Router
    config: RouterConfig  # the configuration in force (the last valid one)
    env: Mapping[str, str]
    log: Log
    reader: TableReader
    stats: Stats = field(default_factory=Stats)
    clock: Callable[[], float] = time.monotonic
    watcher: FileWatcher | None = None
    baseline: str | None = None  # the table's shape right after our last apply
    pending: RouterConfig | None = None  # a valid new configuration the kernel refused
    next_check: float = 0.0
    check_every: float = CHECK_EVERY

    def __post_init__(self) -> None:
        if self.watcher is None and self.config.destination_file:
            self.watcher = FileWatcher(self.config.destination_file)
        self.next_check = self.clock() + self.check_every

    def started(self, first: Outcome | None = None) -> None:
        """The start-up apply (done by the caller) succeeded: remember what the kernel holds."""
        with self.stats.lock:
            self.stats.last_reload_success = time.time()
        self._applied(first)
        self._follow_names()

    def _follow_names(self) -> None:
        """Hand the names of the configuration in force to the resolver thread (started at
        the first configuration that has any)."""
        names = self.config.destinations.names
        self._names_ready()
        if self.stats.names is None and names:
            from .dns.start import follower

            self.stats.names = follower(self.router, lambda: self.config, self.log)
        elif self.stats.names is not None:
            self.stats.names.follow(names)

    def _new_answers(self) -> None:
        """A name's answer changed: its chain alone is rewritten (one transaction)."""
        answers = self.stats.names.take() if self.stats.names is not None else None
        if answers is not None:
            self.router.answers = answers
            if self._apply(self.config, "new addresses of a destination name"):
                self._names_ready()

    def _names_ready(self) -> None:
        """/readyz waits until every name of the configuration has addresses in the kernel."""
        applied = dict(self.router.answers)
        self.stats.names_ready = all(n in applied and applied[n].addresses for n in self.config.destinations.names)

    def _applied(self, outcome: Outcome | None) -> None:
        """What every successful apply leaves: its figures, and the table's shape to compare
        the kernel with."""
        if outcome is not None:
            self.stats.observe_apply(outcome.seconds)
            self.stats.address_conflicts += len(outcome.conflicts)
            if outcome.full_table:
                self.stats.rebase()
        self.baseline = self._shape()
        self.stats.ready = True

    def tick(self, reload: bool = False) -> None:
        """One turn of the loop: reload if asked or if the file changed, check when due."""
        self.stats.last_tick = time.monotonic()
        if self.watcher is not None and self.watcher.changed():
            self.log.info("destination file changed", path=self.watcher.path)
            reload = True
        if reload:
            self.reload()
        self._new_answers()
        if self.clock() >= self.next_check:
            self.next_check = self.clock() + self.check_every
            self.check()

    def reload(self) -> None:
        try:
            new = load_environment(self.env)
        except ConfigError as error:
            # One event per rejected load, however many lines are wrong: the first few say
            # what to fix, the count says how much (`egress-router validate` lists more).
            shown = error.problems[:LOGGED_PROBLEMS]
            self.log.error(
                "rejected the new configuration, keeping the old one",
                problems=error.count,
                first="; ".join(map(str, shown)),
                **({"stopped": error.note} if error.note else {}),
            )
            self.stats.reloaded(False)
            return
        self.stats.reloaded(self._apply(new, "reload"))

    def check(self) -> None:
        """Compare the kernel with what was applied; restore it if someone changed it."""
        try:
            reasons = self.drift()
        except EgressRouterError as error:
            self.log.error("could not check the kernel state", error=str(error))
            self.stats.ready = False
            return
        if not reasons:
            if self.pending is not None:  # the kernel refused it once: it may take it now
                self._apply(self.pending, "retry of the new configuration")
                return
            self.stats.ready = self.router.applied is not None or not self.config.mode.redirects
            if not self.stats.ready:  # a failed repair: retry the configuration in force
                self._apply(self.config, "retry")
            return
        self.log.warning("the kernel state was changed by someone else; restoring it", drift="; ".join(reasons))
        # Unknown table contents: replace the whole table, in one transaction.
        self.router.forget()
        if self._apply(self.config, "repair"):
            self.stats.drift_repairs += 1

    def drift(self) -> list[str]:
        reasons = []
        if self.config.mode.redirects:
            shape = self._shape()
            if shape is None:
                reasons.append(f"table {TABLE_FAMILY} {TABLE_NAME} is missing")
            elif shape != self.baseline:
                reasons.append(f"table {TABLE_FAMILY} {TABLE_NAME} was altered")
        # The same read the reconcile step starts with: rtnetlink dumps, no process.
        plan, now = self.router.plan(self.config)
        if now is None or now.link is None:
            return [*reasons, f"interface {self.config.egress_interface} is missing"]
        reasons += differences(now, plan.network.wanted(now.link))
        if self.router.applied is not None and plan.table != self.router.applied:
            reasons.append("the MTU of the pod or egress interface changed (the MSS clamp follows it)")
        return reasons

    def _apply(self, config: RouterConfig, why: str) -> bool:
        try:
            # A reload plans with what the last read found; a repair or retry reads afresh.
            outcome = self.router.apply(config, fresh=why != "reload")
        except EgressRouterError as error:
            self.log.error(f"{why} failed", error=str(error))
            if config != self.config:
                # A new configuration the kernel refused: the reconcile put the one in force
                # back, which keeps serving; the new one is tried again at each check.
                self.pending = config
                return False
            # The configuration in force is not in the kernel: the next check does a full resync.
            self.router.forget()
            self.stats.ready = False
            return False
        self.config = config
        self.pending = None
        self._applied(outcome)
        if why == "reload" or why.startswith("retry"):
            self._follow_names()
        self.log.info(
            f"{why} applied",
            full_table=outcome.full_table,
            route=outcome.route or "none",
            nft_operations=outcome.operations,
            seconds=f"{outcome.seconds:.4f}",
        )
        return True

    def _shape(self) -> str | None:
        if not self.config.mode.redirects:
            return None
        state = self.reader.read_table(TABLE_FAMILY, TABLE_NAME)
        if state is None:
            return None
        self.stats.counted(traffic(state))  # the last counts before a repair may rebuild it
        return state.shape


def run(
    router: Router,
    config: RouterConfig,
    log: Log,
    env: Mapping[str, str],
    reader: TableReader | None = None,
    first: Outcome | None = None,
    ha: Controller | None = None,
) -> int:
    """Stay until SIGTERM or SIGINT; the caller has applied `config` once already."""
    # Blocked before any thread starts, so that every thread inherits the mask and the signals
    # wait for `sigtimedwait` in this loop instead of interrupting a thread mid-apply.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS | RELOAD_SIGNALS | WAKE_SIGNALS)
    if reader is None:
        from .nft.listing import NftTableReader

        reader = NftTableReader()
    daemon = Daemon(router, config, env, log, reader, check_every=_check_every(env))
    daemon.started(first)
    if ha is not None:
        ha.begin(daemon)
    server = _serve(config.served_http_port, daemon, log)
    log.info("router running", mode=config.mode.value, http_port=config.served_http_port,
             watching=config.destination_file or "")
    try:
        _loop(daemon, ha)
    finally:
        if ha is not None:
            ha.close(daemon)
        if server is not None:
            server.stop()
        if daemon.stats.names is not None:
            daemon.stats.names.stop()
    log.info("stopped on signal")
    return 0


def _check_every(env: Mapping[str, str]) -> float:
    try:
        value = float(env.get(CHECK_EVERY_VARIABLE, CHECK_EVERY))
    except ValueError:
        return CHECK_EVERY
    return value if value > 0 else CHECK_EVERY


def _loop(daemon: Daemon, ha: Controller | None = None) -> None:
    started = time.monotonic()
    # An HA standby holds no address to announce: the takeover announces its own.
    announcements = [] if ha is not None else [started + delay for delay in ANNOUNCE_AGAIN_AFTER]
    while True:
        info = signal.sigtimedwait(STOP_SIGNALS | RELOAD_SIGNALS | WAKE_SIGNALS, TICK)
        if info is not None and info.si_signo in STOP_SIGNALS:
            return
        if ha is not None:
            ha.step(daemon)
            if info is not None and info.si_signo in WAKE_SIGNALS:
                if time.monotonic() - daemon.stats.last_tick < TICK:
                    continue  # woken early: the tick comes at its time
                info = None
        if info is not None:
            daemon.log.info("reloading on SIGHUP")
        daemon.tick(reload=info is not None)
        if announcements and time.monotonic() >= announcements[0]:
            announcements.pop(0)
            _announce(daemon)


def _announce(daemon: Daemon) -> None:
    try:
        outcome = daemon.router.apply(daemon.config, announce=True)
        daemon.stats.address_conflicts += len(outcome.conflicts)
    except EgressRouterError as error:
        daemon.log.warning("could not announce again", error=str(error))


def _serve(port: int, daemon: Daemon, log: Log) -> HealthServer | None:
    if not port:
        return None
    # Imported here: init mode and port 0 never load prometheus_client or http.server.
    from .http import HealthServer

    try:
        server = HealthServer(port, daemon.stats, daemon.reader, log)
    except OSError as error:
        log.error("cannot serve health and metrics", port=port, error=error.strerror or str(error))
        return None
    server.start()
    return server
