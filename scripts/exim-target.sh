#!/usr/bin/env bash
# Exim as a measured target, in tlsstorm's image (its Exim and docker/exim.conf): on a loopback
# port of this host (--network host), STARTTLS with a given chain, all mail discarded.
#   scripts/exim-target.sh run PORT CERT KEY     in the foreground until SIGTERM: a target the
#                                                local stack starts and stops
#   scripts/exim-target.sh stop PORT
# IMAGE (default tlsstorm:<this checkout's short SHA>): built with `make images` if missing.
# TLSSTORM_EXIM_CPUSET: the CPUs its container may use (docker --cpuset-cpus), e.g. 1.
# TLSSTORM_EXIM_PID_FILE: where to write the container's first process's pid (a meter reads
# its cgroup: tlsstorm meter --cgroup-of-pid-file).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
image=${IMAGE:-tlsstorm:$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null || echo dev)}

ensure_image() {
  "$root/scripts/dockerd.sh"
  if docker image inspect "$image" >/dev/null 2>&1; then return; fi
  echo "exim-target: building $image (make images)" >&2
  "$root/scripts/base-image.sh" local/python-base:bookworm >&2
  local bundle=${EXTRA_CA:-}
  if [ -z "$bundle" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    bundle=/etc/ssl/certs/ca-certificates.crt
  fi
  IMAGE_REPOSITORY=${image%:*} IMAGE_TAG=${image##*:} BASE_IMAGE=local/python-base:bookworm \
    EXTRA_CA=$bundle "$root/scripts/build-image.sh" >&2
}

case "${1:-}" in
  run)
    port=$2 cert=$3 key=$4
    ensure_image
    name=tlsstorm-exim-$port
    docker rm -f "$name" >/dev/null 2>&1 || true
    folder=$(mktemp -d)
    chmod 0755 "$folder"
    install -m 0644 "$cert" "$folder/cert.pem"
    install -m 0644 "$key" "$folder/key.pem"  # the container's user reads it
    trap 'docker stop -t 5 "$name" >/dev/null 2>&1; rm -rf "$folder"; exit 0' TERM INT
    docker run --rm --name "$name" --network host --read-only \
      ${TLSSTORM_EXIM_CPUSET:+--cpuset-cpus "$TLSSTORM_EXIM_CPUSET"} \
      --tmpfs /var/spool/exim-target:uid=10001,gid=10001 \
      -v "$folder:/run/tlsstorm-tls:ro" --entrypoint /usr/sbin/exim4 \
      "$image" -bdf -oX "127.0.0.1.$port" &
    if [ -n "${TLSSTORM_EXIM_PID_FILE:-}" ]; then
      for _ in $(seq 100); do
        pid=$(docker inspect -f '{{.State.Pid}}' "$name" 2>/dev/null) || pid=0
        if [ "${pid:-0}" -gt 0 ] 2>/dev/null; then echo "$pid" >"$TLSSTORM_EXIM_PID_FILE"; break; fi
        sleep 0.1
      done
    fi
    wait $! || true
    rm -rf "$folder"
    echo "exim-target: the container $name has exited" >&2
    exit 1
    ;;
  stop)
    docker stop -t 5 "tlsstorm-exim-$2" >/dev/null 2>&1 || true
    ;;
  *)
    echo "usage: $0 run PORT CERT KEY | stop PORT" >&2
    exit 2
    ;;
esac
