# syntax=docker/dockerfile:1
#
# The `wabulk` binary in a slim image: one image for every subcommand (`run`,
# `simulate`, `loadgen`, `demo`, `check-config`); docker-compose.yml picks the
# subcommand per service. Build: `docker build -t wabulk .`

# --- build stage -------------------------------------------------------------
# Latest stable Rust 1.x on Debian bookworm (the workspace needs rust-version
# 1.85 or later; dependencies in Cargo.lock may need a newer one).
FROM rust:1-bookworm AS builder

# The C toolchain and headers for librdkafka, which rdkafka-sys builds from
# source: the same script as on a developer's machine and in CI.
COPY scripts/install-build-deps /usr/local/bin/install-build-deps
RUN install-build-deps && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .
# The registry and target directory live in BuildKit caches, so rebuilding
# after a source change recompiles only what changed; the binary is copied
# out of the cache because cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p wabulk --bin wabulk \
    && cp target/release/wabulk /usr/local/bin/wabulk

# --- runtime stage -----------------------------------------------------------
# librdkafka is linked statically; the binary links glibc, libgcc_s, zlib and
# libzstd (in the slim image), OpenSSL and Cyrus SASL (installed here, with
# the GSSAPI module for Kerberos). ca-certificates is the system store the
# engine trusts for https://graph.facebook.com, besides its bundled roots.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 libsasl2-2 \
       libsasl2-modules-gssapi-mit libzstd1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin wabulk
COPY --from=builder /usr/local/bin/wabulk /usr/local/bin/wabulk
# Defaults; docker-compose.yml mounts deploy/ over them.
COPY deploy/wabulk.toml deploy/loadgen.toml /etc/wabulk/
USER wabulk
# /metrics, /healthz, /readyz ([http] listen in deploy/wabulk.toml).
EXPOSE 9464
ENTRYPOINT ["wabulk"]
CMD ["run", "--config", "/etc/wabulk/wabulk.toml"]
