"""A small change to a large live rule set, through the router's own reconcile step.

Run in the router's namespace: `live_change.py FILE_A FILE_B ROUNDS`, with the lab's seed
environment on stdin as JSON. It applies FILE_A (N mappings) through `Router.reconcile` with the
real adapters, then alternates B, A, B, ... where B differs from A in a few lines, timing each
step: reading and parsing the file, the whole reconcile (plan, diff, the write), and the
nft adapter's write alone (a netlink batch of element changes). It also reports whether every
change was element-only.
"""

from __future__ import annotations

import json
import sys
import time

from egress_router.config import load_environment
from egress_router.neighbours.fake import RecordingAnnouncer
from egress_router.network.rtnl import RtNetlink
from egress_router.nft.cli import NftCli
from egress_router.reconcile import Router


class TimedNft(NftCli):
    """The real nft adapter, remembering how long its last apply took."""

    last_seconds = 0.0

    def apply(self, tx):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        super().apply(tx)
        self.last_seconds = time.perf_counter() - started


def main() -> None:
    file_a, file_b, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    env = json.load(sys.stdin)
    nft = TimedNft()
    router = Router(nft=nft, net=RtNetlink(), announcer=RecordingAnnouncer())
    started = time.perf_counter()
    first = router.apply(load_environment({**env, "EGRESS_DESTINATION_FILE": file_a}))
    initial = time.perf_counter() - started
    steps = []
    for i in range(rounds):
        path = file_b if i % 2 == 0 else file_a
        t0 = time.perf_counter()
        config = load_environment({**env, "EGRESS_DESTINATION_FILE": path})
        t1 = time.perf_counter()
        outcome = router.apply(config)
        t2 = time.perf_counter()
        lines = [line for line in outcome.nft_script.splitlines() if line.strip()]
        steps.append(
            {
                "parse_s": t1 - t0,
                "reconcile_s": t2 - t1,
                "nft_s": nft.last_seconds,
                "full_table": outcome.full_table,
                "element_only": bool(lines)
                and all(line.startswith(("add element ", "delete element ")) for line in lines),
                "script_lines": len(lines),
                "script_bytes": len(outcome.nft_script),
            }
        )
    json.dump(
        {"initial_s": initial, "initial_full_table": first.full_table, "steps": steps,
         "example_script": steps[0] and router_script_example(router, env, file_a, file_b)},
        sys.stdout,
    )


def router_script_example(router: Router, env: dict, file_a: str, file_b: str) -> str:  # type: ignore[type-arg]
    """The transaction text of one change, shortened, for the report."""
    from egress_router.nft import diff
    from egress_router.plan import build_plan

    a = build_plan(load_environment({**env, "EGRESS_DESTINATION_FILE": file_a})).table
    b = build_plan(load_environment({**env, "EGRESS_DESTINATION_FILE": file_b})).table
    assert a is not None and b is not None
    text = str(diff(a, b))
    return text if len(text) < 2000 else text[:2000] + "..."


if __name__ == "__main__":
    main()
