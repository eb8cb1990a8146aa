"""A residual net on real data: ResNet-20 on Fashion-MNIST, dense vs each method vs the composition vs the peers.

CIFAR-style ResNet-20 (0.27M parameters, option-A shortcuts, BatchNorm) at Fashion-MNIST's native 28x28, Adam 3e-3
held then cosine, ``--epochs`` epochs over ``--train-fraction`` of the 54,000 training images per epoch (the 2-core
CPU budget; the 6,000 validation and 10,000 test images are whole). Rows, side by side in one run per seed:

* dense (``dense_resnet20_fmnist``);
* each method alone on the same recipe: NeuronElimination (target 70% of the parameters), SuccessivePruning (95%),
  Ternarization (QAT), WeightSharing (default search);
* the composition ``full_resnet20_fmnist`` (NeuronElimination -> SuccessivePruning -> WeightSharing);
* the peers on the same dense recipe: Lightning's ``ModelPruning`` (global L1, gradual) + gap coding + xz, and the
  Deep-Compression-style k-means (32 values) + Huffman coding of that pruned model (``bench.composed_fmnist``).

Our accuracies are the reloaded artifacts'; sizes are file bytes; ratios against fp32 of the original model.

    python -m bench.resnet20_fmnist --seeds 0 --epochs 6 --train-fraction 0.3
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from bench.common import RESULTS, mean_std, quiet_run, write_results
from bench.composed_fmnist import run_peers, run_recipe

NAME = "resnet20_fmnist"
NET = "resnet20"
PEER_SPARSITY = 0.95
LR = 3e-3
SINGLES = {
    "NeuronElimination": [
        "compress=[neuron_elimination]",
        "compress.neuron_elimination.target_params=0.7",
        "compress.neuron_elimination.final_fraction=0.3",
    ],
    "SuccessivePruning": ["compress=[successive_pruning]", "compress.successive_pruning.target_sparsity=0.95"],
    "Ternarization": ["compress=[ternarization]"],
    "WeightSharing": ["compress=[weight_sharing]"],
}


def run_seed(seed: int, epochs: int, fraction: float, rows: list[str]) -> dict[str, Any]:
    common = [*quiet_run(seed, epochs), f"trainer.limit_train_batches={fraction}", f"optimizer.lr={LR}"]
    out: dict[str, Any] = {"seed": seed}
    out[f"{NET}/dense@{LR:g}"] = dense = run_recipe("dense_resnet20_fmnist", common)
    print("dense", dense, flush=True)
    fp32 = 4 * dense["params"]
    for name, overrides in SINGLES.items():
        if name in rows:
            out[f"{NET}/{name}"] = run_recipe("dense_resnet20_fmnist", common, overrides)
            print(name, out[f"{NET}/{name}"], flush=True)
    if "full" in rows:
        out[f"{NET}/full_resnet20_fmnist"] = run_recipe("full_resnet20_fmnist", common)
        print("full", out[f"{NET}/full_resnet20_fmnist"], flush=True)
    if "peers" in rows:
        for key, value in run_peers("dense_resnet20_fmnist", common, epochs, fp32, PEER_SPARSITY, ()).items():
            out[f"{NET}/{key}"] = value
            print(key, value, flush=True)
    return out


LABELS = {
    "NeuronElimination": "NeuronElimination (70% of the parameters)",
    "SuccessivePruning": "SuccessivePruning (95%)",
    "Ternarization": "Ternarization (QAT)",
    "WeightSharing": "WeightSharing (default)",
    "full_resnet20_fmnist": "**composed: full_resnet20_fmnist**",
    "peer_xz": f"peer: ModelPruning {PEER_SPARSITY} + gaps + xz",
    "peer_dc": f"peer: Deep-Compression style ({PEER_SPARSITY} + k-means 32 + Huffman)",
}


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, str]]:
    table = []
    keys = [f"{NET}/dense@{LR:g}", *[f"{NET}/{k}" for k in LABELS]]
    for key in keys:
        rows = [(r, r[key]) for r in runs if key in r]
        if not rows:
            continue
        drops = [100 * (r[f"{NET}/dense@{LR:g}"]["acc"] - v["acc"]) for r, v in rows]
        acc = mean_std([100 * v["acc"] for _, v in rows])
        table.append(
            {
                "method": "dense fp32" if "dense@" in key else LABELS[key.split("/", 1)[1]],
                "test acc (%)": f"{acc[0]:.2f} ± {acc[1]:.2f}",
                "drop (pt)": f"{mean_std(drops)[0]:.2f}",
                "bytes": f"{mean_std([v['bytes'] for _, v in rows])[0]:,.0f}",
                "ratio": f"{mean_std([v['ratio'] for _, v in rows])[0]:.1f}x",
                "fit (s)": f"{mean_std([v['wall_s'] for _, v in rows])[0]:.0f}",
            }
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-fraction", type=float, default=0.3)
    parser.add_argument("--rows", nargs="+", default=[*SINGLES, "full", "peers"], choices=[*SINGLES, "full", "peers"])
    parser.add_argument("--name", default=NAME, help="results file name (bench/results/<name>.{json,md})")
    args = parser.parse_args()
    torch.set_num_threads(2)
    runs = [run_seed(seed, args.epochs, args.train_fraction, args.rows) for seed in args.seeds]
    (RESULTS / f"{args.name}.runs.json").write_text(json.dumps(runs, indent=1))
    notes = (
        f"Seeds {args.seeds}; ResNet-20 on Fashion-MNIST (28x28), {args.epochs} epochs over {args.train_fraction:.0%} "
        f"of the training images per epoch, Adam {LR:g} held then cosine; accuracy of the reloaded artifact on the "
        "10,000 test images; drop against the dense run of the same seed; ratio against fp32 of the original model."
    )
    payload = {"seeds": args.seeds, "epochs": args.epochs, "train_fraction": args.train_fraction, "runs": runs}
    print(write_results(args.name, payload, summarise(runs), notes).read_text())


if __name__ == "__main__":
    main()
