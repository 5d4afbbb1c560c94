"""The CNI spec's error object: a well-known code, a message and details, printed as JSON."""

from __future__ import annotations

# Well-known codes of the CNI spec; 100 and above are this plugin's own.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_CONFIG = 7
LINK_FAILURE = 100  # the kernel refused to create, move or change the interface
ROUTER_FAILURE = 101  # the router could not be set up in the pod
CHECK_FAILURE = 102  # CHECK found the interface or the router not as ADD left them
# An exception nothing above foresaw: a bug, reported as the spec's error object rather than a
# traceback. Not 11 ("try again later"): nothing says that retrying would help.
INTERNAL_FAILURE = 999


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, version: str) -> dict[str, object]:
        return {"cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details}
