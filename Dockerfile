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
# The real mail servers the chart can run as measured targets, beside tlsstorm's receiver:
# Postfix (Debian's package; its master runs as root) and Exim (Debian's exim4-daemon-light,
# run as a user: only its binary and the libraries it links, since Debian's exim4 and postfix
# packages exclude each other; the binary looks up its build's user, Debian-exim, at start).
# Not pinned: they come with the base image's Debian release.
# hadolint ignore=DL3008,DL3003
RUN printf 'postfix postfix/main_mailer_type select No configuration\n' > /tmp/debconf \
    && debconf-set-selections /tmp/debconf && rm /tmp/debconf \
    && apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
         postfix libdb5.3 libgnutls-dane0 libgnutls30 libidn12 libidn2-0 libnsl2 \
         libpcre2-8-0 \
    && cd /tmp && apt-get download exim4-daemon-light \
    && dpkg-deb -x exim4-daemon-light_*.deb /tmp/exim \
    && install -m 0755 /tmp/exim/usr/sbin/exim4 /usr/sbin/exim4 \
    && rm -rf /tmp/exim /tmp/exim4-daemon-light_*.deb /var/lib/apt/lists/* \
    && useradd --system --no-create-home --shell /usr/sbin/nologin Debian-exim \
    && groupadd --gid 10001 tlsstorm \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
         --shell /usr/sbin/nologin tlsstorm \
    && mkdir -p /etc/exim4
COPY docker/exim.conf /etc/exim4/exim4.conf
COPY scripts/postfix-sink.sh scripts/postfix-instance.sh /opt/tlsstorm-scripts/
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
EXPOSE 2525 8025 8026 8027 8028 8089
CMD ["tlsstorm", "--help"]
