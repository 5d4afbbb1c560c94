"""argparse with the project's error style: one line on stderr and exit status 2, no usage dump."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from ..errors import EXIT_CONFIG, ConfigError


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def report(error: UsageError | ConfigError) -> int:
    lines = error.lines() if isinstance(error, ConfigError) else [str(error)]
    for line in lines:
        sys.stderr.write(f"egress-router: {line}\n")
    return EXIT_CONFIG
