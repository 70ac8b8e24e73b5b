#!/usr/bin/env bash
# Builds the tlsstorm image tagged with the git SHA (and :latest for local use).
#   BASE_IMAGE  base with python3 (default python:3.11-slim-bookworm; offline machines build
#               local/python-base:bookworm with scripts/base-image.sh)
#   EXTRA_CA    a CA bundle for pip behind a TLS-intercepting proxy
set -euo pipefail
cd "$(dirname "$0")/.."
repository=${IMAGE_REPOSITORY:-tlsstorm}
tag=${IMAGE_TAG:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo dev)}
rm -f docker/extra-ca/extra.crt
if [ -n "${EXTRA_CA:-}" ]; then
  cp "$EXTRA_CA" docker/extra-ca/extra.crt
fi
trap 'rm -f docker/extra-ca/extra.crt' EXIT
docker build --network host \
  --build-arg "BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim-bookworm}" \
  --label "org.opencontainers.image.revision=$tag" \
  -t "$repository:$tag" -t "$repository:latest" .
echo "$repository:$tag"
