"""egress-router: the egress router for Kubernetes and OpenShift, in redirect mode.

The package is laid out as the router works:

- `config` (text -> `model`) and `plan` (model -> desired state, named by `schema`) are the
  pure core;
- `nft` (the NAT table), `network` (links, addresses, routes) and `neighbours` (ARP and
  neighbour discovery) are the adapters to the kernel, each with an in-memory fake beside it;
  `netlink` is the message plumbing the first two share;
- `reconcile` takes desired state to the kernel in one step, safe to repeat;
- `cli` is the `egress-router` command, `daemon` the long-running `legacy` mode;
- `lab` builds the network-namespace lab that the tests, demo and benchmarks use.
"""

__version__ = "0.1.0"
