#!/usr/bin/env bash
# The main job: environment, data, the flagship composed recipe (LeNet-300-100 on Fashion-MNIST: NeuronElimination,
# SuccessivePruning, WeightSharing in one fit), size report, reloaded accuracy vs the committed dense reference.
# Extra arguments are passed to lcompress, e.g. `bash scripts/main.sh trainer.max_epochs=2`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LC_EXTRAS="${LC_EXTRAS:-dev}" source "$ROOT/scripts/env.sh"
bash "$ROOT/scripts/get_data.sh"
cd "$ROOT"
exec lcompress recipe=full_lenet300_fmnist "$@"
