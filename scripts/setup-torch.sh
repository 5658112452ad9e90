#!/usr/bin/env bash
# Creates, once, the Python environment of the PyTorch cross-check (scripts/crosscheck): PyTorch
# 2.11 (the same release as the worker's libtorch), NumPy and safetensors. PyPI's torch wheel for
# Linux pulls in its CUDA libraries (about 4.7 GB on disk, a few minutes to install); it runs on
# the CPU without a GPU. Prints its python on stdout.
exec "$(dirname "$0")/setup-venv.sh" torch-venv "torch==2.11.0 numpy==2.4.6 safetensors==0.8.0" \
  "about 4.7 GB"
