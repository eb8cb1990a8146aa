#!/usr/bin/env bash
# Create (once) the project's virtual environment in .venv and install the project with its pinned versions.
# Sourced by main.sh and test.sh. Set LC_EXTRAS to choose extras (default: dev,sweep,docs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  "$PY" -m venv "$ROOT/.venv"
fi
STAMP="$ROOT/.venv/.lc-installed"
# Reinstall only when the dependency files changed (fast re-runs).
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -c1-16)-${LC_EXTRAS:-dev,sweep,docs}"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  "$ROOT/.venv/bin/python" -m pip install --quiet --upgrade pip
  # torch and torchvision first, exactly the pair in constraints.txt (on this kind of machine they are on disk).
  "$ROOT/.venv/bin/python" -m pip install --quiet -c "$ROOT/constraints.txt" torch torchvision
  "$ROOT/.venv/bin/python" -m pip install --quiet -c "$ROOT/constraints.txt" -e "$ROOT[${LC_EXTRAS:-dev,sweep,docs}]"
  echo "$WANT" > "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
