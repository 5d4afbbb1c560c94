"""`egress-router health [--ready]`: the HTTP probes as a command, for runtimes that run a
probe as a process in the container (podman turns an httpGet probe into a `curl` call, and the
image has no curl).

GETs `/healthz` (or `/readyz` with `--ready`) from the `legacy` router in the same pod, on
localhost at EGRESS_ROUTER_HTTP_PORT, and prints one line: exit 0 when it answers 200, 1
otherwise. It reads only that one variable, so a probe every few seconds costs no parse of the
rules.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from .errors import EXIT_CONFIG, EXIT_FAILURE

USAGE = """\
usage: egress-router health [--ready] [--timeout SECONDS]
GET /healthz (with --ready: /readyz) from the legacy-mode router of this pod, on localhost at
EGRESS_ROUTER_HTTP_PORT (default 9090). Prints one line; exit 0 if it answered 200, else 1."""

DEFAULT_TIMEOUT = 2.0


def main(args: list[str], env: Mapping[str, str]) -> int:
    from .config import HTTP_PORT, _Invalid, _parse_http_port
    from .model import DEFAULT_HTTP_PORT

    path, timeout = "/healthz", DEFAULT_TIMEOUT
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg in ("-h", "--help"):
            print(USAGE)
            return 0
        if arg == "--ready":
            path = "/readyz"
        elif arg == "--timeout" and rest:
            try:
                timeout = float(rest.pop(0))
            except ValueError:
                return _usage_error("--timeout takes a number of seconds")
        else:
            return _usage_error(f"unknown argument {arg!r}")
    text = env.get(HTTP_PORT, "").strip()
    try:
        port = _parse_http_port(text) if text else DEFAULT_HTTP_PORT
    except _Invalid as error:
        sys.stderr.write(f"egress-router: config error: {HTTP_PORT}: {error}\n")
        return EXIT_CONFIG
    if port == 0:
        print(f"{path}: not served ({HTTP_PORT}=0)")
        return EXIT_FAILURE
    code, body = get(port, path, timeout)
    print(f"{path}: {body}" if code == 200 else f"{path}: {code or 'no answer'}: {body}")
    return 0 if code == 200 else EXIT_FAILURE


def get(port: int, path: str, timeout: float) -> tuple[int, str]:
    """(status, first line of the body); status 0 and the reason when nothing answered."""
    import http.client

    # 127.0.0.1: the router serves a dual-stack socket, or an IPv4 one where IPv6 is off.
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read(200).decode("utf-8", "replace").strip().splitlines()
        return response.status, body[0] if body else ""
    except (OSError, http.client.HTTPException) as error:
        return 0, f"127.0.0.1:{port}: {getattr(error, 'strerror', None) or error}"
    finally:
        connection.close()


def _usage_error(message: str) -> int:
    sys.stderr.write(f"egress-router: health: {message}; see egress-router health --help\n")
    return EXIT_CONFIG
