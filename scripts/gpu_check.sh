#!/usr/bin/env bash
# The GPU checks, as one prepared script for a lent GPU machine (about 6 minutes on one H200):
#   1. tests/test_gpu.py: every callback and a composed fit on CUDA, SuccessivePruning's decisions equal on CPU
#      and CUDA bit for bit, WeightSharing's candidates written on the device;
#   2. bench.scale on CUDA: event times, step times and torch.cuda.max_memory_allocated for ResNet-18/50 and
#      ViT-B/16 (results in bench/results/scale_gpu.{json,md,png}, copied to $OUT when it is set).
# Uses the Python on PATH (torch with CUDA must be installed there): the GPU machine reaches no package index.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export WANDB_MODE=disabled PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
python -m pytest tests/test_gpu.py -q -p no:cacheprovider 2>&1 | tail -20
python -m bench.scale --device cuda --nets resnet18 resnet50 vit_b_16 --steps 16 --batch 32 --val-images 256 \
  --name scale_gpu
if [ -n "${OUT:-}" ]; then cp bench/results/scale_gpu.* "$OUT"/; fi
