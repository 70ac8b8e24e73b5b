#!/usr/bin/env bash
# Builds a Python base image from Debian with debootstrap, for machines that cannot pull from
# a registry. The root filesystem tarball is cached, so later builds only `docker import` it.
set -euo pipefail
image=${1:-local/python-base:bookworm}
cache=${TLSSTORM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tlsstorm}
if docker image inspect "$image" >/dev/null 2>&1; then exit 0; fi
mkdir -p "$cache"
tarball="$cache/python-base-bookworm.tar"
if [ ! -s "$tarball" ]; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  if [ -z "$mirror" ]; then
    mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  fi
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}"
  tar -C "$rootfs" -c . >"$tarball.partial"
  mv "$tarball.partial" "$tarball"
fi
docker import "$tarball" "$image"
