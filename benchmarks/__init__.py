"""The benchmark suite: `python -m benchmarks` (or `make bench`) builds the lab and measures, in
one run, what the router's rule layout and start-up cost against the alternatives.

- `latency`: new-connection latency against the number of mappings, for this project's maps,
  the OpenShift image's linear layout, and a two-rule floor;
- `throughput`: iperf3 through the router, the floor, HAProxy and socat;
- `apply`: apply time against N, and a small change to a large live rule set;
- `startup`: `init` wall time, import time and `legacy` mode's memory.

`report` turns the results into a markdown table and PNG plots. Measurements run in the lab's
namespaces through small stand-alone scripts in `probes/`.
"""
