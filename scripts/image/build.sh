#!/usr/bin/env bash
# `make image`: builds localhost/egress-router:<version> and :latest from the Containerfile
# with podman, as root on Debian. Installs what it needs first (podman, buildah, runc,
# debootstrap). The Containerfile's base is pulled where a registry can be reached and built
# from Debian's packages where not (scripts/image/base.sh); either way it is kept in podman's
# storage, so a second build reuses it and podman's layer cache, and takes seconds.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
# shellcheck source=env.sh
. "$here/env.sh"

# None of these starts a service on install (podman's socket unit needs systemd, and is not
# enabled by the package), so no policy-rc.d is needed. netavark 1.4 sets up a bridge network
# (the tests' cluster side) with iptables; catatonit is what podman builds its local pause
# (infra) image from, as the registry's pause image cannot be pulled.
packages=(podman buildah runc netavark aardvark-dns iptables catatonit debootstrap)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "image: missing system packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  echo "image: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$top/pyproject.toml")
name=${IMAGE_NAME:-localhost/egress-router}
"$here/base.sh" >/dev/null

args=()
# pip inside the build must trust what the host trusts (a proxy's CA on these machines): the
# host's bundle is mounted for the build's RUN steps only, and is not copied into the image.
[ -f /etc/ssl/certs/ca-certificates.crt ] &&
  args+=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
previous=$(podman image inspect --format '{{.Id}}' "$name:latest" 2>/dev/null || true)
started=$(date +%s)
# The host's network for the build: it needs no bridge, NAT or firewall rules of its own.
podman build -q --network host --pull=never "${args[@]}" -f "$top/Containerfile" \
  -t "$name:$version" -t "$name:latest" "$top" >/dev/null
# The image this one replaces, now untagged; kept if a container still uses it.
current=$(podman image inspect --format '{{.Id}}' "$name:latest")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
  podman rmi "$previous" >/dev/null 2>&1 || true
fi
size=$(podman image inspect --format '{{.Size}}' "$name:latest")
echo "image: built $name:$version and :latest in $(( $(date +%s) - started ))s, $(( size / 1000000 )) MB" >&2
