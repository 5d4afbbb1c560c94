"""The error hierarchy: every failure a user can meet is one of these.

`EgressRouterError` is caught once, in the command-line entry point, and printed as one line per
problem; nothing below it prints or exits.

- `ConfigError` (exit 2) is raised by the pure core (`config`) when the input is wrong. It holds
  every `Problem` found, not only the first, so that a user fixes them in one go (up to a
  bound, with a count of the rest).
- `SetupError` (exit 1) is raised before anything is changed, when the environment cannot host
  the router (the egress interface is missing, a tool is not installed, a capability is absent).
- `ApplyError` (exit 1) is raised by an adapter when the kernel refuses a change; it names the
  step and carries the kernel's (or the tool's) own message, and a `Kind` that the adapter
  (real or fake) sets, so that the core decides on the kind and never reads a tool's words.
"""

from __future__ import annotations

import errno
from enum import Enum
from typing import NamedTuple

EXIT_CONFIG = 2
EXIT_FAILURE = 1


class Problem(NamedTuple):
    """One thing wrong with the input, located as precisely as the input allows."""

    variable: str
    message: str
    line: int | None = None
    text: str | None = None

    def __str__(self) -> str:
        where = self.variable if self.line is None else f"{self.variable} line {self.line}"
        if self.text is None:
            return f"{where}: {self.message}"
        return f"{where}: {self.message}: {self.text.strip()!r}"


class EgressRouterError(Exception):
    """Base of every error the router reports to a user."""

    exit_code = EXIT_FAILURE

    def lines(self) -> list[str]:
        """What the user sees: one line per problem."""
        return [str(self)]


class ConfigError(EgressRouterError):
    """The configuration is invalid; nothing was applied. Raised by `egress_router.config`."""

    exit_code = EXIT_CONFIG

    def __init__(self, problems: list[Problem], more: int = 0, note: str | None = None) -> None:
        """`problems` are the first ones found (the parser keeps a bounded number: a 1 MB file
        of mistakes must not cost a problem object, or a log line, per line); `more` counts the
        rest; `note` says where checking stopped, if it did."""
        if not problems:
            raise ValueError("ConfigError needs at least one problem")
        self.problems = list(problems)
        self.more = more
        self.note = note
        super().__init__("; ".join(self.lines_without_prefix()))

    @property
    def count(self) -> int:
        return len(self.problems) + self.more

    def lines_without_prefix(self) -> list[str]:
        tail = [f"... and {self.more:,} more problem(s) not shown"] if self.more else []
        return [str(p) for p in self.problems] + tail + ([self.note] if self.note else [])

    def lines(self) -> list[str]:
        return [f"config error: {line}" for line in self.lines_without_prefix()]


class SetupError(EgressRouterError):
    """The environment cannot host the router; raised before anything is changed."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")

    def lines(self) -> list[str]:
        return [f"setup error: {self}"]


class Kind(Enum):
    """What sort of refusal an `ApplyError` is, as the adapter that raised it classified it."""

    EXISTS = "exists"  # the object to create is there already
    NOT_FOUND = "not found"  # the object to change or delete (or its container) is not there
    NOT_PERMITTED = "not permitted"  # a capability or a read-only /proc/sys is missing
    OTHER = "other"

    @classmethod
    def of_errno(cls, code: int) -> Kind:
        if code == errno.EEXIST:
            return cls.EXISTS
        # ESRCH: no such route; EADDRNOTAVAIL: no such address.
        if code in (errno.ENOENT, errno.ENODEV, errno.ESRCH, errno.ENXIO, errno.EADDRNOTAVAIL):
            return cls.NOT_FOUND
        if code in (errno.EPERM, errno.EACCES, errno.EROFS):
            return cls.NOT_PERMITTED
        return cls.OTHER


class ApplyError(EgressRouterError):
    """The kernel (or the tool talking to it) refused a change. Raised by the adapters."""

    def __init__(self, step: str, detail: str, kind: Kind = Kind.OTHER) -> None:
        self.step = step
        self.detail = " ".join(detail.split()) or "no message"
        self.kind = kind
        super().__init__(f"failed to {step}: {self.detail}")

    def lines(self) -> list[str]:
        return [f"apply error: {self}"]
