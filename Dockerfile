# One image for every tlsstorm component; each runs with its own command (see charts/tlsstorm).
# The legacy builder works: no BuildKit-only syntax here.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# The sender's SMTP engine is C with a rustls static library (services/tlsstorm/sender/engine):
# a compiler, OpenSSL's headers and cargo for this stage only (cargo-web: bookworm's Rust recent
# enough for rustls; cargo fetches the crates its Cargo.lock pins); the final image keeps the
# OpenSSL library Python already uses. Not pinned: they come from the base image's own Debian
# release and never reach the final image.
# hadolint ignore=DL3008
RUN if ! { command -v cc && [ -f /usr/include/openssl/ssl.h ] && command -v cargo; } >/dev/null; \
    then \
      apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
           gcc libc6-dev libssl-dev cargo-web \
      && rm -rf /var/lib/apt/lists/*; \
    fi
# Behind a TLS-intercepting proxy, put its CA bundle in docker/extra-ca/*.crt (make images
# EXTRA_CA=/etc/ssl/certs/ca-certificates.crt does) and pip and cargo will trust it.
COPY docker/extra-ca/ /tmp/extra-ca/
RUN python3 -m venv /opt/tlsstorm
COPY pyproject.toml setup.py README.md requirements.lock /src/
COPY services /src/services
# requirements.lock pins every package: pip downloads one version of each, no backtracking.
RUN for bundle in /tmp/extra-ca/*.crt; do \
      if [ -f "$bundle" ]; then export PIP_CERT="$bundle" CARGO_HTTP_CAINFO="$bundle"; fi; \
    done; \
    /opt/tlsstorm/bin/pip install --no-cache-dir --disable-pip-version-check \
      --constraint /src/requirements.lock /src \
    && rm -rf /src

FROM ${BASE_IMAGE}
COPY --from=build /opt/tlsstorm /opt/tlsstorm
COPY load /opt/tlsstorm-load
ENV PATH=/opt/tlsstorm/bin:$PATH \
    TLSSTORM_LOCUSTFILE=/opt/tlsstorm-load/locustfile.py \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# Numeric non-root user: Kubernetes can check runAsNonRoot without a passwd entry.
USER 10001:10001
WORKDIR /tmp
EXPOSE 2525 8025 8026 8027 8089
CMD ["tlsstorm", "--help"]
