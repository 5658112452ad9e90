#!/usr/bin/env bash
# Builds a CPU libtorch 2.11.0 from PyPI wheels, once, outside the repository.
#
#   scripts/setup-libtorch.sh        # prints the libtorch directory on stdout
#
# The PyPI wheel torch==2.11.0 carries a complete libtorch (headers, cmake files, shared
# libraries). We keep the CPU libraries and the two CUDA runtime libraries that
# libtorch_cpu.so links against, taken from their own wheels. The result lives in
# ${BNSWEEP_CACHE:-~/.cache/bnsweep}/libtorch-2.11.0-cpu and is reused on every later run.
# Idempotent: an existing, complete directory is used as is; a half-built one is never seen
# because the directory is assembled under a temporary name and renamed at the end.
set -euo pipefail

cache="${BNSWEEP_CACHE:-$HOME/.cache/bnsweep}"
dest="$cache/libtorch-2.11.0-cpu"
if [[ -f "$dest/.complete" ]]; then
  echo "$dest"
  exit 0
fi

python="${PYTHON:-python3}"
mkdir -p "$cache/wheels"
echo "setup-libtorch: fetching torch==2.11.0 and CUDA runtime wheels from PyPI (about 540 MB, once)" >&2
"$python" -m pip download --quiet --no-deps --only-binary=:all: -d "$cache/wheels" \
  torch==2.11.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85 >&2

tmp="$(mktemp -d "$cache/libtorch.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "setup-libtorch: unpacking into $dest" >&2
"$python" - "$cache/wheels" "$tmp" <<'PY'
import glob, os, shutil, sys, zipfile
wheels, out = sys.argv[1], sys.argv[2]
keep_lib = {"libc10.so", "libtorch_cpu.so", "libtorch.so", "libgomp.so.1", "libshm.so"}
(torch_whl,) = glob.glob(os.path.join(wheels, "torch-2.11.0-*.whl"))
with zipfile.ZipFile(torch_whl) as z:
    for name in z.namelist():
        parts = name.split("/")
        if parts[0] != "torch" or len(parts) < 3 or name.endswith("/"):
            continue
        if parts[1] in ("include", "share") or (parts[1] == "lib" and parts[2] in keep_lib):
            target = os.path.join(out, *parts[1:])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(name) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
for pattern, lib in [("nvidia_cuda_runtime-13.0.96-*.whl", "libcudart.so.13"),
                     ("nvidia_cuda_cupti-13.0.85-*.whl", "libcupti.so.13")]:
    (whl,) = glob.glob(os.path.join(wheels, pattern))
    with zipfile.ZipFile(whl) as z:
        (name,) = [n for n in z.namelist() if n.endswith("/lib/" + lib)]
        with z.open(name) as src, open(os.path.join(out, "lib", lib), "wb") as dst:
            shutil.copyfileobj(src, dst)
missing = [l for l in keep_lib if not os.path.exists(os.path.join(out, "lib", l))]
if missing:
    sys.exit(f"setup-libtorch: the torch wheel lacks {missing}")
PY
echo "2.11.0" > "$tmp/build-version"
touch "$tmp/.complete"
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
rm -rf "$cache/wheels"
echo "$dest"
