"""NeuronElimination vs L1-norm neuron pruning vs dense, LeNet-300-100 on real Fashion-MNIST, side by side in one run.

* dense: the reference recipe (10 epochs, Adam 1e-3, cosine);
* peer: L1-norm neuron pruning: torch-pruning's group magnitude importance (p=1 over the producer's row, its
  consumer's columns and any BatchNorm entries), pruning at the same steps to *the same widths per layer* that ours
  reached in each round, with the same masks, the same fine-tuning and the same final shrinking — only the choice
  of neurons differs and nothing is redistributed;
* ours: ``NeuronElimination`` (the ``shah_lenet300_fmnist`` recipe: 10 rounds over the first half, target 10% of
  the parameters);
* context: the dense recipe trained from scratch at ours' final widths (what the small architecture reaches
  without any pruning).

Reported: parameters remaining (of the final, physically smaller model), test accuracy of the reloaded artifact,
artifact bytes, ratio vs the dense artifact, fit wall time and its ratio to the dense fit.
Run: ``python -m bench.shah_lenet300_fmnist [--seeds 0 1 2] [--target 0.1]``.
"""

from __future__ import annotations

import argparse
from typing import Any

import lightning.pytorch as pl
import torch
import torch_pruning as tp
from torch import nn

from bench.common import composed, mean_sd_text, quiet_run, write_results
from lightning_compress.callbacks.neuron_elimination import NeuronElimination
from lightning_compress.cli import train
from lightning_compress.functional.neuron_elimination import Elimination, RoundRecord

NAME = "shah_lenet300_fmnist"


class L1NeuronPruning(NeuronElimination):
    """The peer: the same rounds, masks and shrinking as ours, but L1-magnitude choice to given widths."""

    LOG_PREFIX = "l1_pruning"

    def __init__(self, widths: list[list[int]], **kwargs: Any) -> None:
        super().__init__(verbose=False, **kwargs)
        self.widths = widths

    def _decide(self, trainer: pl.Trainer, pl_module: pl.LightningModule, module: nn.Module) -> list[RoundRecord]:
        alive = self.alive()
        goal = self.widths[min(self._round, len(self.widths) - 1)]
        example = next(iter(self.training_inputs(trainer, pl_module, 1, "L1NeuronPruning")))[:2]
        device = next(module.parameters()).device
        graph = tp.DependencyGraph().build_dependency(module, example_inputs=example.to(device), verbose=False)
        importance = tp.importance.GroupMagnitudeImportance(p=1, normalizer=None)
        records = []
        for i, pair in enumerate(self.pairs):
            excess = len(alive[i]) - goal[i]
            if excess <= 0:
                continue
            layer = module.get_submodule(pair.producer)
            prune = graph.get_pruner_of_module(layer).prune_out_channels
            group = graph.get_pruning_group(layer, prune, list(range(pair.channels)))
            scores = importance(group).detach().cpu()[alive[i]]  # masked neurons are zero anyway
            order = torch.argsort(scores)[:excess].tolist()
            none, no_coefficients = torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.float64)
            eliminations = [Elimination(alive[i][j], none, no_coefficients, 0.0, float(scores[j])) for j in order]
            records.append(RoundRecord(i, eliminations))
        return records


def widths_per_round(callback: NeuronElimination) -> list[list[int]]:
    """The widths ours reached after each round."""
    return [[int(h["figures"][f"neurons/{p.producer}"]) for p in callback.pairs] for h in callback.history]


def outcome(key: str, metrics: dict[str, float], objects: dict[str, Any], widths: list[int]) -> dict[str, Any]:
    """One method's figures, prefixed with ``key``: reloaded-artifact accuracy, final parameters, bytes, wall."""
    return {
        f"{key}_acc": metrics["test/acc_artifact"],
        f"{key}_params": sum(p.numel() for p in objects["module"].backbone.parameters()),
        f"{key}_bytes": metrics["size/artifact_bytes"],
        f"{key}_wall_s": metrics["fit/wall_s"],
        f"{key}_widths": widths,
    }


def run_seed(seed: int, epochs: int, target: float) -> dict[str, Any]:
    common = quiet_run(seed, epochs)
    out: dict[str, Any] = {"seed": seed}
    with composed("dense_lenet300_fmnist", common) as cfg:
        m, _ = train(cfg)
    out.update(dense_acc=m["test/acc_artifact"], dense_wall_s=m["fit/wall_s"], dense_bytes=m["size/artifact_bytes"])

    with composed(NAME, [*common, f"compress.neuron_elimination.target_params={target}"]) as cfg:
        m, objects = train(cfg)
        options = dict(cfg.compress.neuron_elimination)
    ours = next(c for c in objects["trainer"].callbacks if isinstance(c, NeuronElimination))
    widths = widths_per_round(ours)
    out.update(outcome("ours", m, objects, widths[-1]), ours_rounds=len(widths))

    # the peer trains exactly like ours (same recipe, same round steps), only the neurons it drops differ
    peer_options = {k: options[k] for k in ("rounds", "final_fraction", "calibration_batches", "min_rows_per_neuron")}
    with composed(NAME, [*common, "compress=[]"]) as cfg:
        peer = L1NeuronPruning(widths, **peer_options)
        m, objects = train(cfg, extra_callbacks=[peer])
    out.update(outcome("peer", m, objects, [len(a) for a in peer.alive()]))

    hidden = "[" + ",".join(str(w) for w in widths[-1]) + "]"
    with composed("dense_lenet300_fmnist", [*common, f"+model.hidden={hidden}"]) as cfg:
        m, objects = train(cfg)
    out.update(outcome("scratch", m, objects, widths[-1]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--target", type=float, default=0.1)
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(seed, args.epochs, args.target))
        print(runs[-1], flush=True)
    dense_params = 266_610

    def stat(fn: Any, digits: int = 2) -> str:
        return mean_sd_text([fn(r) for r in runs], digits)

    table = [
        {
            "method": "dense fp32",
            "widths": "300-100",
            "params (%)": "100",
            "test acc (%)": stat(lambda r: 100 * r["dense_acc"]),
            "drop (pt)": "-",
            "artifact bytes": stat(lambda r: r["dense_bytes"], 0),
            "ratio vs dense": "1.00",
            "fit wall (s)": stat(lambda r: r["dense_wall_s"], 1),
            "wall / dense": "1.00",
        }
    ]
    methods = (
        ("scratch", "context: dense trained from scratch at ours' widths"),
        ("peer", "L1-norm neuron pruning (torch-pruning), same widths"),
        ("ours", "ours: NeuronElimination"),
    )
    for key, label in methods:
        table.append(
            {
                "method": label,
                "widths": " / ".join("-".join(str(w) for w in r[f"{key}_widths"]) for r in runs),
                "params (%)": stat(lambda r, k=key: 100 * r[f"{k}_params"] / dense_params),
                "test acc (%)": stat(lambda r, k=key: 100 * r[f"{k}_acc"]),
                "drop (pt)": stat(lambda r, k=key: 100 * (r["dense_acc"] - r[f"{k}_acc"])),
                "artifact bytes": stat(lambda r, k=key: r[f"{k}_bytes"], 0),
                "ratio vs dense": stat(lambda r, k=key: r["dense_bytes"] / r[f"{k}_bytes"], 1),
                "fit wall (s)": stat(lambda r, k=key: r[f"{k}_wall_s"], 1),
                "wall / dense": stat(lambda r, k=key: r[f"{k}_wall_s"] / r["dense_wall_s"]),
            }
        )
    notes = (
        f"LeNet-300-100 on real Fashion-MNIST, {args.epochs} epochs of Adam 1e-3 with cosine decay for all three; "
        f"ours and the peer run 10 rounds over the first half of the steps to {args.target:.0%} of the parameters, "
        "then fine-tune; the peer prunes to ours' widths after every round. Accuracy of the reloaded artifact; bytes "
        "are whole .lcz files (fp32, dense codec; the smaller models are physically smaller). Widths per seed."
    )
    payload = {"runs": runs, "seeds": args.seeds, "epochs": args.epochs, "target": args.target}
    path = write_results(NAME, payload, table, notes)
    print(path.read_text())


if __name__ == "__main__":
    main()
