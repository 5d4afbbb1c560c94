"""Logs: one event per line on stderr, as text or as JSON lines (`EGRESS_ROUTER_LOG_FORMAT=json`)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Log:
    def __init__(self, debug: bool = False, json: bool = False, stream: TextIO | None = None) -> None:
        self.debug_enabled = debug
        self.json = json
        self.stream = stream if stream is not None else sys.stderr

    def debug(self, message: str, **fields: object) -> None:
        if self.debug_enabled:
            self._emit("debug", message, fields)

    def info(self, message: str, **fields: object) -> None:
        self._emit("info", message, fields)

    def warning(self, message: str, **fields: object) -> None:
        self._emit("warning", message, fields)

    def error(self, message: str, **fields: object) -> None:
        self._emit("error", message, fields)

    def _emit(self, level: str, message: str, fields: dict[str, object]) -> None:
        if self.json:
            import json

            record = {"time": round(time.time(), 3), "level": level, "msg": message, **fields}
            line = json.dumps(record, default=str)
        else:
            extra = "".join(f" {k}={v}" for k, v in fields.items())
            line = f"egress-router: {level}: {message}{extra}"
        self.stream.write(line + "\n")
        self.stream.flush()
