# Builds both binaries, `kurir` and `kurir-sandbox`, into one small image.
# No `# syntax=` line: BuildKit's built-in Dockerfile frontend handles
# `RUN --mount=type=cache`, and needs nothing from a registry to do so.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p kurir-cli -p kurir-sandbox \
 && cp target/release/kurir target/release/kurir-sandbox /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home kurir
COPY --from=build /usr/local/bin/kurir /usr/local/bin/kurir-sandbox /usr/local/bin/
USER kurir
# Inside a container, listen on every interface.
ENV KURIR_API_ADDR=0.0.0.0:8080 \
    KURIR_WORKER_METRICS_ADDR=0.0.0.0:9091 \
    KURIR_SANDBOX_ADDR=0.0.0.0:9090
EXPOSE 8080 9090 9091
CMD ["kurir", "api"]
