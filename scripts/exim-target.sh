#!/usr/bin/env bash
# Exim as a measured target, in a container built from the Debian base (docker/exim): on a
# loopback port of this host (--network host), STARTTLS with a given chain, all mail discarded.
#   scripts/exim-target.sh build                 the image (prints its name)
#   scripts/exim-target.sh run PORT CERT KEY     in the foreground until SIGTERM: a target the
#                                                local stack starts and stops
#   scripts/exim-target.sh stop PORT
# TLSSTORM_EXIM_CPUSET: the CPUs its container may use (docker --cpuset-cpus), e.g. 1.
# TLSSTORM_EXIM_PID_FILE: where to write the container's first process's pid (a meter reads
# its cgroup: tlsstorm meter --cgroup-of-pid-file).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
base=local/python-base:bookworm
# The image is named after what it is built from, so a change rebuilds it and nothing else does.
image=tlsstorm-exim:$(cat "$root/docker/exim/Dockerfile" "$root/docker/exim/exim.conf" |
  sha256sum | cut -c1-12)

build() {
  "$root/scripts/dockerd.sh"
  if docker image inspect "$image" >/dev/null 2>&1; then echo "$image"; return; fi
  "$root/scripts/base-image.sh" "$base" >&2
  docker build --network host --build-arg "BASE_IMAGE=$base" -t "$image" \
    "$root/docker/exim" >&2
  echo "$image"
}

case "${1:-}" in
  build)
    build
    ;;
  run)
    port=$2 cert=$3 key=$4
    build >/dev/null
    name=tlsstorm-exim-$port
    docker rm -f "$name" >/dev/null 2>&1 || true
    folder=$(mktemp -d)
    install -m 0644 "$cert" "$folder/cert.pem"
    install -m 0644 "$key" "$folder/key.pem"  # read by the container's user only in it
    trap 'docker stop -t 5 "$name" >/dev/null 2>&1; rm -rf "$folder"; exit 0' TERM INT
    docker run --rm --name "$name" --network host --read-only \
      ${TLSSTORM_EXIM_CPUSET:+--cpuset-cpus "$TLSSTORM_EXIM_CPUSET"} \
      --tmpfs /var/spool/exim-target:uid=10001,gid=10001 \
      -v "$folder/cert.pem:/etc/exim-target/cert.pem:ro" \
      -v "$folder/key.pem:/etc/exim-target/key.pem:ro" \
      "$image" -oX "127.0.0.1.$port" &
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
    echo "usage: $0 build | run PORT CERT KEY | stop PORT" >&2
    exit 2
    ;;
esac
