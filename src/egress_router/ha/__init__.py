"""High availability of `legacy` mode: two replicas, one reserved address (docs/ha.md).

Imported only when EGRESS_ROUTER_HA is set: a router without HA never loads any of it.

- `settings`: the HA variables, validated like the rest of the environment;
- `keepalived`: the VRRP engine's configuration, and keepalived as a supervised child;
- `gate`: the nftables table that ties holding the address to a live router (the dead-man
  switch) and relays the standby's connections to the active;
- `controller`: follows keepalived's state and moves the router between active and standby.
"""
