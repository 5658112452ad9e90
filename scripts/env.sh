# Sourced by the scripts: libtorch for building and running the worker.
export LIBTORCH="$(scripts/setup-libtorch.sh)"
export LIBTORCH_CXX11_ABI=1
export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
