#!/usr/bin/env bash
# Starts a Docker engine for the container checks when none runs (no iptables on this host).
set -euo pipefail
if docker info >/dev/null 2>&1; then exit 0; fi
if ! command -v dockerd >/dev/null; then
  echo "dockerd is not installed (Debian: apt-get install docker.io)" >&2
  exit 1
fi
nohup dockerd --iptables=false --ip-forward=false >/tmp/tlsstorm-dockerd.log 2>&1 &
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then exit 0; fi
  sleep 1
done
echo "dockerd did not start; see /tmp/tlsstorm-dockerd.log" >&2
exit 1
