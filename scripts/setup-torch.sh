#!/usr/bin/env bash
# Creates, once, the Python environment of the PyTorch cross-check (scripts/crosscheck): PyTorch
# 2.11 (the same release as the worker's libtorch), NumPy and safetensors. PyPI's torch wheel for
# Linux pulls in its CUDA libraries (about 4.7 GB on disk, a few minutes to install); it runs on
# the CPU without a GPU. Prints its python on stdout.
set -euo pipefail
cache="${BNSWEEP_CACHE:-$HOME/.cache/bnsweep}"
venv="$cache/torch-venv"
reqs="torch==2.11.0 numpy==2.4.6 safetensors==0.8.0"
if [[ -f "$venv/.complete" && "$(cat "$venv/.complete")" == "$reqs" ]]; then
  echo "$venv/bin/python"
  exit 0
fi
echo "setup-torch: installing $reqs into $venv (once, about 4.7 GB)" >&2
rm -rf "$venv"
"${PYTHON:-python3}" -m venv "$venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check $reqs >&2
echo "$reqs" > "$venv/.complete"
echo "$venv/bin/python"
