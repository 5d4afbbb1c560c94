"""`legacy` mode's names, followed: one thread resolves each name at its TTL (between a floor
and a cap), and keeps the last good answer through failures, retried with backoff.

A thread, rather than a lookup per tick of the daemon's loop: a lookup waits on the network
(seconds, when a nameserver does not answer), and the loop must keep answering SIGTERM, file
changes and drift checks meanwhile. The thread only resolves; the loop applies what changed
(`take`), so the kernel has one writer, and every apply is followed by the loop's drift baseline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from ..log import Log
from ..model import Name
from . import Answer, Answers
from .resolve import DnsError, Lookup

DEFAULT_MIN_TTL = 5.0
DEFAULT_MAX_TTL = 1800.0
RETRY_FIRST = 5.0  # seconds after a failure; doubled at each one after, up to RETRY_MAX
RETRY_MAX = 120.0


@dataclass
class NameState:
    """What is known of one name: its answer in use, and its lookups' record."""

    answer: Answer = field(default_factory=Answer)
    last_success: float = 0.0  # Unix time of the last lookup that gave usable addresses
    failures: int = 0  # lookups that failed, ever
    failing: int = 0  # failures since the last success
    last_error: str = ""
    due: float = 0.0  # monotonic time of the next lookup

    @property
    def resolved(self) -> bool:
        return bool(self.answer.addresses)


class Follower:
    """The names of a configuration, re-resolved in a thread of their own."""

    def __init__(
        self,
        names: Iterable[Name],
        lookup: Callable[[Name], Lookup],
        log: Log,
        min_ttl: float = DEFAULT_MIN_TTL,
        max_ttl: float = DEFAULT_MAX_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lookup, self.log = lookup, log
        self.min_ttl, self.max_ttl, self.clock = min_ttl, max_ttl, clock
        self.states: dict[Name, NameState] = {name: NameState() for name in names}
        self.lock = threading.Lock()
        self.changed = threading.Event()  # an answer changed since the loop last took them
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="egress-router-dns", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=0.2)  # a lookup under way may take seconds: the thread is a daemon

    def _run(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                due = min(self.states.items(), key=lambda kv: kv[1].due, default=None)
            wait = 1.0 if due is None else due[1].due - self.clock()  # no name: a reload may add one
            if due is None or wait > 0:
                self.stopping.wait(min(wait, 1.0))
                continue
            try:
                self.resolve_one(due[0])
            except Exception as error:  # noqa: BLE001 -- the thread must outlive any one name
                self.log.error("following a destination name failed", name=str(due[0]), error=f"{type(error).__name__}: {error}")
                self.stopping.wait(1.0)

    def resolve_one(self, name: Name) -> None:
        """One lookup of `name`, and what it changes (also called directly by tests)."""
        try:
            found = self.lookup(name)
        except DnsError as error:
            self._failed(name, error.answer)
            return
        except Exception as error:  # noqa: BLE001 -- a lookup must never end the thread
            self._failed(name, f"{type(error).__name__}: {error}")
            return
        now = time.time()
        with self.lock:
            state = self.states.get(name)
            if state is None:  # a reload dropped the name while it was looked up
                return
            wait = min(max(float(found.ttl), self.min_ttl), self.max_ttl)
            state.due = self.clock() + wait
            state.last_success, state.failing, state.last_error = now, 0, ""
            # A family whose answer had nothing usable (a dual-stack name whose AAAA record
            # went, or points at loopback) fails alone: it keeps its last addresses, as a
            # name whose whole answer has nothing usable does. Counted as a failure.
            kept = [(family, said, old) for family, said in found.empty if (old := state.answer.of_family(family))]
            addresses = tuple(sorted((*found.addresses, *(a for *_, old in kept for a in old)), key=lambda a: (a.version, int(a))))
            if kept:
                state.failures += 1
                state.last_error = "; ".join(said for _, said, _ in kept)
            changed = addresses != state.answer.addresses
            if changed:
                state.answer = state.answer.replaced(addresses, now)
                self.changed.set()
        for address, why in found.refused:
            self.log.warning("refused an address of a destination name, never used", name=str(name), address=str(address), reason=why)
        for family, said, old in kept:
            self.log.warning(
                f"destination name has no usable IPv{family} address, keeping its last ones",
                name=str(name), answer=said, addresses=",".join(map(str, old)),
            )
        if changed:
            self.log.info("destination name resolved", name=str(name), addresses=",".join(map(str, addresses)), ttl=found.ttl)

    def _failed(self, name: Name, answer: str) -> None:
        with self.lock:
            state = self.states.get(name)
            if state is None:  # a reload dropped the name while it was looked up
                return
            state.failures += 1
            state.failing += 1
            state.last_error = answer
            retry = min(RETRY_FIRST * 2 ** (state.failing - 1), RETRY_MAX)
            state.due = self.clock() + retry
            kept = state.resolved
        self.log.warning(
            "destination name did not resolve" + (", keeping its last addresses" if kept else ""),
            name=str(name), answer=answer, retry_in=f"{retry:g}s",
        )

    def follow(self, names: Iterable[Name]) -> None:
        """Follow `names` from now on (a reload's): new ones are looked up at once, gone ones
        dropped (a lookup of one under way is dropped when it ends)."""
        wanted = dict.fromkeys(names)  # in order, for the states' order (metrics, logs)
        with self.lock:
            for name in wanted:
                self.states.setdefault(name, NameState())
            for name in [n for n in self.states if n not in wanted]:
                del self.states[name]

    def take(self) -> Answers | None:
        """Every name's answer, when one changed since the last take (else None)."""
        if not self.changed.is_set():
            return None
        self.changed.clear()
        return self.answers()

    def answers(self) -> Answers:
        with self.lock:
            return tuple(sorted((n, s.answer) for n, s in self.states.items()))

    def pending(self) -> tuple[Name, ...]:
        """The names that never resolved yet: the router is not ready while there is one."""
        with self.lock:
            return tuple(n for n, s in self.states.items() if not s.resolved)

    def snapshot(self) -> list[tuple[Name, NameState]]:
        with self.lock:
            return [(n, replace(s)) for n, s in self.states.items()]
