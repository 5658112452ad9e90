# The coordinator's image: `bnsweep` alone (no libtorch) on Debian's slim base.
# Built from the repository root:
#   docker build -f deploy/docker/coordinator.Dockerfile -t bnsweep-coordinator:0.1.0 .
# Runs as the unprivileged user 10001; tini is PID 1, passing SIGTERM on (bnsweep then writes
# its trial table and exits, leaving a results directory that resumes) and reaping children.

ARG RUST_VERSION=1.89
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p bnsweep --bin bnsweep \
 && install -D -m 0755 target/release/bnsweep /out/bnsweep

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 bnsweep \
 && useradd --uid 10001 --gid 10001 --home-dir /home/bnsweep --create-home --shell /usr/sbin/nologin bnsweep
COPY --from=build /out/bnsweep /usr/local/bin/bnsweep
USER 10001:10001
WORKDIR /home/bnsweep
# gRPC for workers, the live page (--http), the health port (--health-listen): the ports
# deploy/k8s uses.
EXPOSE 50051 8080 50052
ENTRYPOINT ["/usr/bin/tini", "--", "bnsweep"]
CMD ["--help"]
