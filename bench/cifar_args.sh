# Sourced by the benchmarks that train on CIFAR-10, called as `SCRIPT CIFAR_DIR [--device D]`:
# sets `cifar` (the cifar-10-batches-bin directory, made absolute from where the script was
# called), goes to the repository's root, then sets `device` (cpu unless given) and the
# binaries `bnsweep` (BNSWEEP, default target/release/bnsweep) and `worker` (WORKER, default
# bnsweep-worker beside bnsweep); relative binary paths are from the repository's root.
cifar="$(cd "${1:?usage: $0 CIFAR_DIR [--device D]}" && pwd)"
cd "$(dirname "$0")/.."
device=cpu
[[ "${2:-}" == "--device" ]] && device="$3"
bnsweep="${BNSWEEP:-target/release/bnsweep}"
worker="${WORKER:-$(dirname "$bnsweep")/bnsweep-worker}"
