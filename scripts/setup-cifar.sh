#!/usr/bin/env bash
# Writes, once, CIFAR-10 in its official binary layout from a JPEG mirror
# (cifar10-jpeg.tar.gz and its converter, cifar10_jpeg_to_bin.py, in SHARED_DATA_DIR).
#   scripts/setup-cifar.sh SHARED_DATA_DIR   # prints the cifar-10-batches-bin directory
set -euo pipefail
src="$(cd "$1" && pwd)"
cache="${BNSWEEP_CACHE:-$HOME/.cache/bnsweep}"
out="$cache/cifar10"
if [[ -f "$out/.complete" ]]; then
  echo "$out/cifar-10-batches-bin"
  exit 0
fi
python="$("$(dirname "$0")/setup-python.sh")"
echo "setup-cifar: converting $src/cifar10-jpeg.tar.gz (once)" >&2
rm -rf "$out.tmp"
"$python" "$src/cifar10_jpeg_to_bin.py" "$out.tmp" >&2
rm -rf "$out"
mv "$out.tmp" "$out"
touch "$out/.complete"
echo "$out/cifar-10-batches-bin"
