# Build stage: compile the release binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin pgrelay

# Runtime stage: the binary and its example config, run as an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin pgrelay
COPY --from=build /src/target/release/pgrelay /usr/local/bin/pgrelay
COPY proxy.toml /etc/pgrelay/proxy.toml
USER pgrelay
ENV PGRELAY_SERVER__LISTEN=0.0.0.0:6432 \
    PGRELAY_SERVER__ADMIN_LISTEN=0.0.0.0:9930
EXPOSE 6432 9930
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD curl -fsS http://127.0.0.1:9930/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/pgrelay"]
CMD ["--config", "/etc/pgrelay/proxy.toml"]
