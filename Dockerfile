# syntax=docker/dockerfile:1
# dhanman-stream: one binary, `dhanman`, whose subcommands are the services
# (`dhanman api`, `dhanman relay`, `dhanman process ledger`, `dhanman migrate`, ...).

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# sqlx's compile-time checked queries build from the committed .sqlx/ data (no database here).
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never
COPY . .
# Cache mounts keep the registry and target dir between builds; the binary is copied out of them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin dhanman \
    && install -m 0755 target/release/dhanman /usr/local/bin/dhanman

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin dhanman
COPY --from=builder /usr/local/bin/dhanman /usr/local/bin/dhanman
WORKDIR /app
COPY --chown=dhanman migrations ./migrations
USER dhanman
# MALLOC_ARENA_MAX: two of glibc's malloc arenas instead of up to eight per core (every
# Kafka client thread would make its own); see docs/operations.md, "Memory". The binary
# sets it for itself when it is unset; set here, it starts once, not twice.
ENV RUST_LOG=info \
    DHANMAN_HTTP_ADDR=0.0.0.0:8080 \
    MALLOC_ARENA_MAX=2
# 8080: the API (and its /metrics); 9464: /metrics and /healthz of the relay and the
# processors when DHANMAN_METRICS_ADDR is set (docker-compose.yml sets it; curl probes it).
EXPOSE 8080 9464
CMD ["dhanman", "--help"]
