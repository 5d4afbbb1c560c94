"""The lab of docs/lab.md as project code: a node, an egress router pod, a client pod, the LAN's
gateway and external servers, each in its own network namespace on the real kernel.

    from egress_router.lab import Lab, seed_env
    with Lab() as lab:
        lab.serve([("203.0.113.25", 80, "tcp")])
        lab.run_router(seed_env())
        assert lab.connect(80).source == "192.0.2.99"

`Lab(wiring="shared"|"calico"|"per-node")` wires the pods as those CNIs do (lab/wirings.py).

Used by the lab tests (tests/lab) and by the demo (`python -m egress_router.lab.demo`). Needs
root, `ip` and `nft`.
"""

from .addresses import SEED_DESTINATION, SEED_EXPECTATIONS, seed_env
from .netns import sweep_stale
from .probe import HttpReply, Probe, Stream, Transfer
from .topology import Lab, LabCommandError, LabError
from .wirings import WIRINGS

__all__ = [
    "SEED_DESTINATION",
    "SEED_EXPECTATIONS",
    "WIRINGS",
    "HttpReply",
    "Lab",
    "LabCommandError",
    "LabError",
    "Probe",
    "Stream",
    "Transfer",
    "seed_env",
    "sweep_stale",
]
