#!/usr/bin/env bash
# Create (once) and update the project's virtual environment in .venv. Safe to run again: it only
# reinstalls when pyproject.toml changed. torch is pinned to the 2.13.0 CPU build.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.s2r-installed
want=$(sha256sum pyproject.toml setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e '.[test,ros,dev]'
  echo "$want" > "$stamp"
fi
