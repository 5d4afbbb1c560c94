"""Before/after of a pod start and a restart, interleaved in one lab so that a shared machine's
noise hits both alike:

    git archive <commit> src | tar -x -C /tmp/before
    sudo .venv/bin/python -m benchmarks.restart_ab /tmp/before/src 10000 15

Each round, for the code in BEFORE_SRC and for this checkout: `init` on a new pod (no table,
macvlan0 down), then `init` again (a restart: the table there); then `nft -f` of the same
mappings as linear rules. N 0 is the seed's example. Prints the medians (ms).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from egress_router.lab import Lab, seed_env
from egress_router.lab import addresses as A
from egress_router.lab.topology import SOURCE_ROOT

from .layouts import LINEAR_TABLE, Lan, destination_text, linear_script

RESET = (
    f"nft delete table inet egress_router 2>/dev/null; nft delete table {LINEAR_TABLE} 2>/dev/null; "
    "ip address flush dev macvlan0 && ip link set macvlan0 down"
)


def main(before: str, n: int, runs: int) -> None:
    with Lab() as lab, tempfile.TemporaryDirectory() as scratch:
        rules, linear = Path(scratch, "rules"), Path(scratch, "linear.nft")
        lan = Lan(router=A.ROUTER_IP, server=A.EXTERNAL[0], source=A.SOURCE)
        rules.write_text(destination_text(n, lan) if n else "")
        linear.write_text(linear_script(n, lan) if n else "")

        def timed(argv: list[str], env: dict[str, str]) -> float:
            started = time.perf_counter()
            done = lab.exec("router", argv, env=env, check=False, timeout=120)
            if done.returncode != 0:
                raise SystemExit(f"{argv[0]} failed: {done.stderr.strip()[-400:]}")
            return (time.perf_counter() - started) * 1e3

        figures: dict[str, list[float]] = {}
        for _ in range(runs):
            for name, root in (("before", before), ("after", SOURCE_ROOT)):
                env = lab.router_env(seed_env("init", **({"EGRESS_DESTINATION_FILE": str(rules)} if n else {})))
                if n:
                    env.pop("EGRESS_DESTINATION")
                env["PYTHONPATH"] = root
                lab.exec("router", ["sh", "-c", RESET], check=False)
                for what in ("init", "restart"):
                    figures.setdefault(f"{name} {what}", []).append(timed([sys.executable, "-m", "egress_router"], env))
            if n:
                lab.exec("router", ["sh", "-c", RESET], check=False)
                figures.setdefault("nft -f linear", []).append(timed(["nft", "-f", str(linear)], lab.router_env({})))
        for key, values in figures.items():
            print(f"{key:16} median {statistics.median(values):7.1f} ms  fastest {min(values):7.1f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
