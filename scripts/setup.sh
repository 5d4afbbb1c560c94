#!/usr/bin/env bash
# Installs what `make demo`, `make test` and `make bench` need on a fresh Debian machine:
# system packages with apt-get (only those missing), then a virtual environment with the
# project and its Python dependencies. Safe to run again; it does nothing when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."

# The router needs nft and ip; the tests also run a small benchmark (iperf3 and wrk, the
# userspace proxies it is compared with, nginx as the connection-rate server), so that
# `make bench` keeps working. The lab's DNS server is dnsmasq from dnsmasq-base (no service).
# keepalived is the HA mode's VRRP engine; it only ever runs as the router's child (its host
# service is kept from starting below, and never enabled).
packages=(nftables iproute2 python3-venv iperf3 haproxy socat nginx wrk dnsmasq-base keepalived)

# haproxy and nginx start a host-wide service on install: the benchmark runs its own, in a lab
# namespace only. Unless a policy-rc.d already forbids starts, one that exits 101 stands in for
# the length of the install, and whatever was there before is put back.
policy=/usr/sbin/policy-rc.d
no_services() {
  if [ -x "$policy" ]; then
    local verdict=0
    "$policy" nginx start >/dev/null 2>&1 || verdict=$?
    [ "$verdict" -eq 101 ] && return 0
    mv "$policy" "$policy.egress-setup"
  fi
  printf '#!/bin/sh\n# egress-router setup.sh: no service starts during the install\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  trap restore_policy EXIT
}
restore_policy() {
  rm -f "$policy"
  if [ -e "$policy.egress-setup" ]; then mv "$policy.egress-setup" "$policy"; fi
}

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing system packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  # One install at a time on a shared machine (and one stand-in policy).
  exec 9>/var/lock/egress-router-setup.lock
  flock 9
  echo "setup: installing ${missing[*]}" >&2
  no_services
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# keepalived runs only as the HA router's child, never as the host's service.
if command -v systemctl >/dev/null 2>&1; then systemctl disable keepalived >/dev/null 2>&1 || true; fi

venv=${VENV:-.venv}
extras=test
stamp="$venv/.installed-$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[$extras]"
  touch "$stamp"
fi
# Bytecode for the editable install: where PYTHONDONTWRITEBYTECODE is set (as on these
# machines) Python would otherwise compile the router at every start.
"$venv/bin/python" -m compileall -q src >/dev/null || true
