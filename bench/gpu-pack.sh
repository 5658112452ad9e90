#!/usr/bin/env bash
# Prepares what bench/gpu.sh needs on a GPU machine (no cargo, no network there), in
# bench-gpu-pack/ (ignored by git, about 45 MB, under the 64 MiB a device run carries): the
# release binaries, stripped, and the CIFAR-10 JPEG archive with its converter (converted on
# the GPU machine, whose Python has Pillow), from the data directory CI machines keep beside
# the checkout.
#
#   bench/gpu-pack.sh [DATA_DIR]      # default: that directory
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data}"
source scripts/env.sh
cargo build --release --bins --quiet
pack=bench-gpu-pack
rm -rf "$pack"
mkdir -p "$pack"
strip -o "$pack/bnsweep" target/release/bnsweep
strip -o "$pack/bnsweep-worker" target/release/bnsweep-worker
cp "$data/cifar10-jpeg.tar.gz" "$data/cifar10_jpeg_to_bin.py" "$pack/"
du -sh "$pack" >&2
