# Sourced by the benchmarks that train on CIFAR-10, called as `SCRIPT CIFAR_DIR [--device D]`:
# goes to the repository's root, then sets `cifar` (the cifar-10-batches-bin directory, made
# absolute), `device` (cpu unless given), and the binaries `bnsweep` (BNSWEEP, default
# target/release/bnsweep) and `worker` (WORKER, default bnsweep-worker beside it).
cd "$(dirname "$0")/.."
cifar="$(cd "${1:?usage: $0 CIFAR_DIR [--device D]}" && pwd)"
device=cpu
[[ "${2:-}" == "--device" ]] && device="$3"
bnsweep="${BNSWEEP:-target/release/bnsweep}"
worker="${WORKER:-$(dirname "$bnsweep")/bnsweep-worker}"
