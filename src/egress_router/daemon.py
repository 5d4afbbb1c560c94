"""`legacy` mode: the router stays, and leaves promptly on SIGTERM or SIGINT."""

from __future__ import annotations

import signal
from collections.abc import Mapping

from .log import Log
from .model import RouterConfig
from .reconcile import Router

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
# A few more announcements after start-up, for a LAN that missed the first one.
ANNOUNCE_AGAIN_AFTER = (1.0, 2.0)


def run(router: Router, config: RouterConfig, log: Log, env: Mapping[str, str]) -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    log.info("router running", mode=config.mode.value)
    for delay in ANNOUNCE_AGAIN_AFTER:
        if signal.sigtimedwait(STOP_SIGNALS, delay) is not None:
            return _stopped(log)
        router.reconcile(config, announce=True)
    signal.sigwait(STOP_SIGNALS)
    return _stopped(log)


def _stopped(log: Log) -> int:
    log.info("stopping on signal")
    return 0
