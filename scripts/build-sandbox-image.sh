#!/usr/bin/env bash
# Build the image the `docker` sandbox backend runs its sessions in, once per machine.
#
#   scripts/build-sandbox-image.sh [IMAGE]        # default: $CONCH_DOCKER_IMAGE or conch-sandbox:latest
#   scripts/build-sandbox-image.sh --force [IMAGE]
#
# A minimal Debian bookworm root file system (debootstrap --variant=minbase) with python3,
# python3-dill (snapshots of functions and classes) and bash, imported as an image into the
# local podman storage (or, without podman, into the engine the docker CLI talks to). Does
# nothing when the image already exists. Needs root, debootstrap and the Debian mirror that
# apt is configured with; takes about 2 minutes on a fresh machine (most of it debootstrap).
set -euo pipefail

force=0
if [ "${1:-}" = "--force" ]; then
  force=1
  shift
fi
image="${1:-${CONCH_DOCKER_IMAGE:-conch-sandbox:latest}}"
suite="${CONCH_SANDBOX_SUITE:-bookworm}"

if command -v podman >/dev/null 2>&1; then
  engine=podman
elif command -v docker >/dev/null 2>&1; then
  engine=docker
else
  echo "neither podman nor docker is installed (scripts/install-system-deps.sh)" >&2
  exit 1
fi

exists() {
  if [ "$engine" = podman ]; then
    podman image exists "$image"
  else
    docker image inspect "$image" >/dev/null 2>&1
  fi
}

if [ "$force" -eq 0 ] && exists; then
  echo "sandbox image $image is present ($engine)" >&2
  exit 0
fi
command -v debootstrap >/dev/null 2>&1 || {
  echo "debootstrap is not installed (scripts/install-system-deps.sh)" >&2
  exit 1
}

# The Debian mirror apt already uses (deb822 "URIs:" or one-line "deb URL suite ...").
mirror=""
for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
  [ -r "$f" ] || continue
  mirror=$(awk '
    /^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /debian\/?$/ && $i !~ /security/) { print $i; exit } }
    /^deb / { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { if ($i ~ /debian\/?$/ && $i !~ /security/) { print $i; exit } break } }
  ' "$f")
  [ -n "$mirror" ] && break
done
mirror="${mirror:-http://deb.debian.org/debian}"

work=$(mktemp -d /var/tmp/conch-sandbox-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
started=$(date +%s)
echo "building $image from $suite at $mirror (about 2 minutes) ..." >&2
debootstrap --variant=minbase --include=python3,python3-dill "$suite" "$rootfs" "$mirror" \
  >"$work/debootstrap.log" 2>&1 || {
  tail -20 "$work/debootstrap.log" >&2
  exit 1
}
# What a sandbox never needs: package caches and lists, documentation, translations.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
  "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
  "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log
chroot "$rootfs" python3 -c "import dill" || {
  echo "the built root file system has no working python3 with dill" >&2
  exit 1
}

tar -C "$rootfs" --numeric-owner -c . |
  $engine import \
    --change 'CMD ["python3"]' \
    --change 'LABEL org.conch.sandbox.image=1' \
    - "$image" >/dev/null
echo "built $image in $(($(date +%s) - started)) s" >&2
