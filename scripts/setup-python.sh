#!/usr/bin/env bash
# Creates, once, the Python environment the tests read results with (pyarrow, polars, DuckDB,
# pandas) and convert the CIFAR-10 mirror with (Pillow). Prints its python on stdout.
exec "$(dirname "$0")/setup-venv.sh" venv \
  "pyarrow==26.0.1 polars==2.1.0 duckdb==2.0.1 pandas==3.1.1 pillow==13.0.0 matplotlib==3.11.2"
