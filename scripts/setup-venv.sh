#!/usr/bin/env bash
# Creates, once, a Python environment under the cache with exactly the given requirements, and
# prints its python on stdout. A changed list makes it anew; a half-made one is never reused
# (the list is recorded in .complete last).
#   scripts/setup-venv.sh NAME "REQUIREMENTS" [NOTE]    # NOTE: shown while installing
set -euo pipefail
name="$1" reqs="$2" note="${3:-}"
venv="${BNSWEEP_CACHE:-$HOME/.cache/bnsweep}/$name"
if [[ -f "$venv/.complete" && "$(cat "$venv/.complete")" == "$reqs" ]]; then
  echo "$venv/bin/python"
  exit 0
fi
echo "setup: installing $reqs into $venv (once${note:+, $note})" >&2
rm -rf "$venv"
"${PYTHON:-python3}" -m venv "$venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check $reqs >&2
echo "$reqs" > "$venv/.complete"
echo "$venv/bin/python"
