#!/usr/bin/env bash
# Makes sure the Containerfile's base image exists in podman's local storage. Where it can be
# pulled, it is pulled; where no registry can be reached (CI, these lab machines), an
# equivalent is built from Debian's own packages and given the very name the Containerfile
# uses, so the Containerfile stays as users build it.
#
#   scripts/image/base.sh            # prints the base's name once it exists
#   EGRESS_ROUTER_BASE=debian ...    # skip the pull, always use the Debian-built base
#
# "Equivalent": Debian 12 (bookworm) with its Python 3.11, pip, ca-certificates, and dpkg
# told to leave documentation out, as the Debian slim images do. The local base is labelled
# with a hash of this script; a changed script builds a new one, an unchanged one is reused.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=env.sh
. "$here/env.sh"

base=$(sed -n 's/^FROM \([^ ]*\).*/\1/p' "$here/../../Containerfile" | head -n 1)
key=$(sha256sum "$here/base.sh" | cut -c1-16)
label=io.egress-router.base-key

log() { echo "image: $*" >&2; }

# A pulled base is kept as it is; one built here only if this script has not changed since.
have_base() {
  podman image exists "$base" || return 1
  local found
  found=$(podman image inspect --format "{{ index .Labels \"$label\" }}" "$base")
  case "$found" in
    "$key") return 0 ;;
    "" | "<no value>") [ "${EGRESS_ROUTER_BASE:-auto}" != debian ] ;;
    *) return 1 ;;
  esac
}

if have_base; then
  echo "$base"
  exit 0
fi
if [ "${EGRESS_ROUTER_BASE:-auto}" != debian ] && timeout 120 podman pull -q "$base" >/dev/null 2>&1; then
  log "pulled $base"
  echo "$base"
  exit 0
fi

log "cannot pull $base; building an equivalent from Debian packages (about a minute, once)"
started=$(date +%s)
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
work=$(mktemp -d /var/tmp/egress-router-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root

debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates \
  bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  log "debootstrap failed: $(tail -n 1 "$work/debootstrap.log")"
  exit 1
}

# What the Debian slim images tell dpkg, so that packages the Containerfile installs later
# bring no documentation, manual pages or translations either.
cat >"$root/etc/dpkg/dpkg.cfg.d/egress-router-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
EOF
# And, as they do, no package cache left behind by a later apt-get.
cat >"$root/etc/apt/apt.conf.d/egress-router-slim" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
# Keep what the dpkg rules would have left, remove the rest.
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/{man,groff,info,lintian,linda,locale}/* \
  "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
  "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/var/cache/debconf/*-old
# The python images install packages system-wide with pip, as the Containerfile does;
# Debian's marker (PEP 668) would refuse that.
rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
ln -sf python3 "$root/usr/bin/python"

tar --numeric-owner -C "$root" --exclude=./dev/* --exclude=./proc/* --exclude=./sys/* \
  -cf "$work/root.tar" .
podman import -q \
  --change "LABEL $label=$key" \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  "$work/root.tar" "$base" >/dev/null
log "built $base from Debian packages in $(( $(date +%s) - started ))s"
echo "$base"
