"""Wall time of whole `egress-router` processes, measured inside the router's namespace.

`init_timer.py RUNS` reads a JSON object {"env": {...}, "argv": [...], "before": [...]} on stdin
and runs `argv` RUNS times with exactly that environment, timing each from spawn to exit (after
running `before`, untimed, if given): what a pod's
init container costs, without the `ip netns exec` that the lab needs to get here. Prints JSON:
the seconds of each run and the last run's exit status and stderr.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time


def main() -> None:
    runs = int(sys.argv[1])
    request = json.load(sys.stdin)
    seconds: list[float] = []
    done = None
    before = request.get("before")
    for _ in range(runs):
        if before:
            subprocess.run(before, env=request["env"], capture_output=True, timeout=120, check=True)
        started = time.perf_counter()
        done = subprocess.run(
            request["argv"], env=request["env"], capture_output=True, text=True, timeout=120, check=False
        )
        seconds.append(time.perf_counter() - started)
        if done.returncode != 0:
            break
    assert done is not None
    json.dump({"seconds": seconds, "returncode": done.returncode, "stderr": done.stderr}, sys.stdout)


if __name__ == "__main__":
    main()
