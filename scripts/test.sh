#!/usr/bin/env bash
# The test suite: ruff, mypy, then pytest without the `slow` tests (about 4 minutes on 2 CPU cores).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
export WANDB_MODE=disabled
ruff check .
ruff format --check lightning_compress tests bench
mypy
pytest -m "not slow" -q "$@"
