# The worker's image: `bnsweep-worker` with the libraries of PyPI's torch==2.11.0 wheel (libtorch,
# CPU and CUDA) and the NVIDIA wheels it depends on (cuBLAS, cuDNN, NCCL, ...), on Debian's slim
# base. The GPU driver is not in the image: on a GPU node the NVIDIA container runtime mounts
# the node's. Built from the repository root:
#   docker build -f deploy/docker/worker.Dockerfile -t bnsweep-worker:0.1.0 .
# About 4 GB, nearly all of it CUDA libraries.

ARG RUST_VERSION=1.89
FROM rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ python3-venv \
 && rm -rf /var/lib/apt/lists/*
# The wheel carries a complete libtorch (headers, cmake files, libraries). Installed with --target
# so that its files lie at /opt/pytorch/torch and /opt/pytorch/nvidia/*, the layout its
# libraries' RPATHs ($ORIGIN/../../nvidia/...) expect; the runtime stage keeps that layout.
RUN python3 -m venv /opt/pip \
 && /opt/pip/bin/pip install --no-cache-dir --no-compile --target /opt/pytorch torch==2.11.0
ENV LIBTORCH=/opt/pytorch/torch \
    LIBTORCH_CXX11_ABI=1
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p bnsweep-worker --bin bnsweep-worker \
 && install -D -m 0755 target/release/bnsweep-worker /out/bnsweep-worker
# Only the shared libraries (and NVIDIA's license files) go on: no headers, static libraries
# or Python.
RUN mkdir -p /out/pytorch/torch \
 && cp -a /opt/pytorch/torch/lib /out/pytorch/torch/lib \
 && rm -f /out/pytorch/torch/lib/libtorch_python.so \
 && cp -a /opt/pytorch/nvidia /out/pytorch/nvidia \
 && find /out/pytorch/nvidia -mindepth 2 -maxdepth 2 -name include -exec rm -rf {} + \
 && find /out/pytorch/nvidia \( -name '*.a' -o -name '*.py' -o -name __pycache__ \) -prune -exec rm -rf {} +

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libstdc++6 tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 bnsweep \
 && useradd --uid 10001 --gid 10001 --home-dir /home/bnsweep --create-home --shell /usr/sbin/nologin bnsweep
COPY --from=build /out/pytorch /opt/pytorch
COPY --from=build /out/bnsweep-worker /usr/local/bin/bnsweep-worker
# The worker loads libtorch_cuda.so from the library path and trains on the GPUs when it can;
# the NVIDIA libraries are found through libtorch's RPATH. The container runtime mounts the
# node's driver (and, with `compute`, nvidia-cuda-mps-control for --mps; `utility` brings
# nvidia-smi).
ENV LD_LIBRARY_PATH=/opt/pytorch/torch/lib \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    BNSWEEP_DATA=/data
USER 10001:10001
WORKDIR /home/bnsweep
# tini is PID 1: it passes SIGTERM and the drain signal on to the worker (which then hands its
# trials back) and reaps what the worker's children leave behind (the MPS daemon forks).
ENTRYPOINT ["/usr/bin/tini", "--", "bnsweep-worker"]
