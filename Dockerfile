# syntax=docker/dockerfile:1
# Build:  docker build -t wxtokend .
#         (--build-arg REVISION=$(git rev-parse HEAD) to label the commit)
# Run:    see config/docker/compose.yml, config/kubernetes/wxtokend.yaml, or
#         docker run -d -v /etc/wxtokend:/etc/wxtokend:ro \
#           -e WXTOKEND__MONGODB__URI=mongodb://mongo:27017 wxtokend
FROM rust:1-bookworm AS build
WORKDIR /src
# The context holds only the build's inputs (.dockerignore is an allowlist).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin wxtokend \
 && cp target/release/wxtokend /wxtokend

# glibc and libgcc only, no shell, runs as uid 65532. TLS roots are compiled
# into the binary (webpki-roots).
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="wxtokend" \
      org.opencontainers.image.description="Keeps WeChat access tokens fresh in MongoDB for every service to read" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=build /wxtokend /usr/local/bin/wxtokend
# WXTOKEND__* variables win over the config file (-e changes them): JSON logs,
# and the admin server (/healthz, /readyz, /metrics) on every address of the
# container, so that probes and Prometheus reach it (publish 9464 or not).
# DL3064 matches "TOKEN" inside the name WXTOKEND: these hold no secret.
# hadolint ignore=DL3064
ENV WXTOKEND_CONFIG=/etc/wxtokend/wxtokend.toml \
    WXTOKEND__LOG__FORMAT=json \
    WXTOKEND__ADMIN__LISTEN=0.0.0.0:9464
EXPOSE 9464
USER 65532:65532
# Liveness only: a refused WeChat account must not restart the container.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/wxtokend", "health"]
ENTRYPOINT ["/usr/local/bin/wxtokend"]
CMD ["run"]
