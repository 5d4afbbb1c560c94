"""Capture `nft -j list table` of the router's table from the real nft, for the listing
reader's tests (tests/data/nft/). Root, in a lab of its own (torn down at the end):

    sudo .venv/bin/python scripts/capture_nft_listings.py

Writes, for the seed's example in `legacy` mode (whose table has the traffic-filled sets that
`init`'s has not): the table as the router leaves it (`fresh`), the same after
traffic through every mapping and the fallback (`traffic`: counters and the traffic-filled
sets hold values), and after someone added a rule to the router's prerouting chain
(`foreign-rule`). Each file is nft's output unchanged; `VERSION` says which nft wrote them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from egress_router.lab import SEED_EXPECTATIONS, Lab, seed_env

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "nft"
SERVERS = [(address, port, protocol) for _, protocol, address, port in SEED_EXPECTATIONS]
TABLE = ["inet", "egress_router"]


def listing(lab: Lab) -> str:
    text = lab.exec("router", ["nft", "-j", "list", "table", *TABLE]).stdout
    json.loads(text)  # nft's own output, but a capture that is not JSON is no fixture
    return text


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    with Lab() as lab:
        lab.serve(SERVERS)
        router = lab.start_router(seed_env("legacy"))
        deadline = time.monotonic() + 15
        while "flags dormant" in (lab.nft_table() or "flags dormant") and router.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if router.poll() is not None or "flags dormant" in (lab.nft_table() or "flags dormant"):
            router.kill()
            sys.stderr.write(router.communicate()[1])
            return 1
        (OUT / "seed-fresh.json").write_text(listing(lab))
        for port, _, _, _ in SEED_EXPECTATIONS:
            for _ in range(3):
                if not lab.connect(port).ok:
                    sys.stderr.write(f"no connection through port {port}\n")
                    return 1
        (OUT / "seed-traffic.json").write_text(listing(lab))
        router.terminate()  # before the foreign rule, which its drift check would take out
        router.communicate(timeout=10)
        lab.exec("router", ["nft", "add", "rule", *TABLE, "prerouting", "tcp", "dport", "9", "accept"])
        (OUT / "seed-foreign-rule.json").write_text(listing(lab))
        version = subprocess.run(["nft", "--version"], capture_output=True, text=True, check=True).stdout
        (OUT / "VERSION").write_text(version)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
