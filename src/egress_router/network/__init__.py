"""Links, addresses, routes, rules and sysctls of the router's namespace.

`network.state` holds the data: what the router owns of its namespace (`NetState`), the typed
changes to it (`Step`) and `converge`, which plans the steps from one state to another. An
adapter only reads and runs steps: `RtNetlink` (`network.rtnl`) speaks rtnetlink to the kernel
itself (no `ip` process, none of pyroute2's import time on the start-up path), and `FakeNet`
(`network.fake`) keeps a namespace in memory and runs the same steps the same way, side effects
of the kernel included, so that a test of a rollback proves the rollback.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .state import NetState, Scope, Step


class NetBackend(Protocol):
    def read(self, scope: Scope) -> NetState:
        """The part of the namespace `scope` names; `link` is None when the egress interface
        does not exist. Raises `ApplyError` if the kernel cannot be read."""

    def apply(self, steps: Sequence[Step], keep_going: bool = False) -> None:
        """Take the steps in order. Stops at the first the kernel refuses and raises
        `ApplyError` naming it (the steps before it stay taken). With `keep_going` (putting a
        state back), every step is tried, a removal of what is already gone is no failure, and
        the error lists every refusal."""

    def has_carrier(self, name: str) -> bool | None:
        """Whether the link's lower layer is up (None: cannot tell)."""
