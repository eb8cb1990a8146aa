#!/usr/bin/env bash
# The main job: environment, data, the default recipe (dense LeNet-300-100 on Fashion-MNIST), size report.
# Extra arguments are passed to lcompress, e.g. `bash scripts/main.sh trainer.max_epochs=2`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LC_EXTRAS="${LC_EXTRAS:-dev}" source "$ROOT/scripts/env.sh"
bash "$ROOT/scripts/get_data.sh"
cd "$ROOT"
exec lcompress recipe=dense_lenet300_fmnist "$@"
