#!/usr/bin/env bash
# Creates, once, the Python environment the tests read results with (pyarrow, polars, DuckDB,
# pandas) and convert the CIFAR-10 mirror with (Pillow). Prints its python on stdout.
set -euo pipefail
cache="${BNSWEEP_CACHE:-$HOME/.cache/bnsweep}"
venv="$cache/venv"
reqs="pyarrow==26.0.1 polars==2.1.0 duckdb==2.0.1 pandas==3.1.1 pillow==13.0.0 matplotlib==3.11.2"
if [[ -f "$venv/.complete" && "$(cat "$venv/.complete")" == "$reqs" ]]; then
  echo "$venv/bin/python"
  exit 0
fi
echo "setup-python: installing $reqs into $venv (once)" >&2
rm -rf "$venv"
"${PYTHON:-python3}" -m venv "$venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check $reqs >&2
echo "$reqs" > "$venv/.complete"
echo "$venv/bin/python"
