#!/usr/bin/env bash
# The test suite: ruff, mypy, the docs site (mkdocs build --strict: any warning fails it), then pytest without
# the `slow` tests (about 5 minutes on 2 CPU cores).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
export WANDB_MODE=disabled
ruff check .
ruff format --check lightning_compress tests bench
mypy
SITE="$(mktemp -d)"
# no --quiet: it hides the warnings --strict counts, and the step could not fail on them
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --site-dir "$SITE"
rm -rf "$SITE"
pytest -m "not slow" -q "$@"
