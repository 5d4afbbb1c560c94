# Sourced by the image scripts: what this project's podman calls need, scoped to them by
# environment variables (nothing in /etc changes). The tests set the same variable
# (tests/image/podman.py); to run podman by hand as the tests do:
#   . scripts/image/env.sh; podman ps -a
export CONTAINERS_CONF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/containers.conf"
