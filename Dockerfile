# syntax=docker/dockerfile:1
# Build:  docker build -t wxtokend .
# Run:    see config/docker/compose.yml, or
#         docker run -d -v /etc/wxtokend:/etc/wxtokend:ro \
#           -e WXTOKEND__MONGODB__URI=mongodb://mongo:27017 wxtokend
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin wxtokend \
 && cp target/release/wxtokend /wxtokend

# glibc and libgcc only, no shell, runs as uid 65532. TLS roots are compiled
# into the binary (webpki-roots).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /wxtokend /usr/local/bin/wxtokend
# DL3064 matches "TOKEN" inside the name WXTOKEND: these hold no secret.
# hadolint ignore=DL3064
ENV WXTOKEND_CONFIG=/etc/wxtokend/wxtokend.toml \
    WXTOKEND__LOG__FORMAT=json
USER 65532:65532
# Liveness only: a refused WeChat account must not restart the container.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/wxtokend", "health"]
ENTRYPOINT ["/usr/local/bin/wxtokend"]
CMD ["run"]
