"""`egress-router-cni`: a CNI 1.0.0 plugin that gives a pod the macvlan interface the router
needs (what OpenShift SDN's assign-macvlan annotation does, for any cluster), and optionally
sets the router up in it. Runs on the node, once per call, so it imports only the standard
library on its path."""
