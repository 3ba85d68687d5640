#!/usr/bin/env bash
# Debian packages conch's sandboxes and tests use. Safe to run again; needs root (or sudo).
set -euo pipefail
# podman, runc, debootstrap: the docker backend's tests (podman's Docker-compatible API; the
# image is built once per machine by scripts/build-sandbox-image.sh, about 2 minutes).
# runsc: the gvisor backend (gVisor's user-space kernel, ptrace platform).
packages=(bubblewrap postgresql podman runc debootstrap runsc)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages present: ${packages[*]}" >&2
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing: ${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
