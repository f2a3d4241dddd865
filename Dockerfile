# Build: docker build -t wxtokend .
# Run:   docker run --rm -v /etc/wxtokend:/etc/wxtokend:ro -e WX_SECRET_MAIN=... wxtokend
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin wxtokend

FROM debian:bookworm-slim
# TLS roots are compiled into the binary (webpki-roots); no extra packages needed.
COPY --from=build /src/target/release/wxtokend /usr/local/bin/wxtokend
USER 65532:65532
ENV WXTOKEND_CONFIG=/etc/wxtokend/wxtokend.toml
ENTRYPOINT ["/usr/local/bin/wxtokend"]
CMD ["run"]
