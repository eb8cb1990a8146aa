"""Run a compression callback under ``ddp_spawn`` on 2 CPU processes and dump every rank's final weights.

Usage: ``python -m tests.helpers.ddp_check METHOD OUT_DIR``; writes ``OUT_DIR/rank{0,1}.pt`` and the artifact.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

import lightning_compress as lc
from tests.helpers.models import blobs, mlp


class DumpRankWeights(pl.Callback):
    """Save this rank's backbone parameters at the end of fit."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = {k: v.detach().cpu().clone() for k, v in pl_module.backbone.state_dict().items()}
        torch.save(state, self.out / f"rank{trainer.global_rank}.pt")


def make_callbacks(method: str) -> list[pl.Callback]:
    if method == "composed":  # the full recipe's shape: shrink, prune, share
        return [
            make_callback("neuron_elimination"),
            lc.SuccessivePruning(target_sparsity=0.8),
            make_callback("weight_sharing"),
        ]
    return [make_callback(method)]


def make_callback(method: str) -> pl.Callback:
    if method == "weight_sharing":
        return lc.WeightSharing(k_bounds=(2, 48), pop_size=6, n_gen=3, progress=False)
    if method == "successive_pruning":
        return lc.SuccessivePruning(target_sparsity=0.9)
    if method == "ternarization":
        return lc.Ternarization(activations=True, first_layer="ternary", last_layer="ternary", restarts=5)
    if method == "neuron_elimination":
        return lc.NeuronElimination(rounds=3, target_params=0.4, verbose=False)
    raise ValueError(f"unknown method {method!r}")


def main(method: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # different seeds per rank would make the replicas' searches differ if nothing were broadcast
    torch.manual_seed(0)
    model = lc.ImageClassifier(mlp(), num_classes=4, optimizer=partial(torch.optim.Adam, lr=0.01))
    # 32-wide hidden layers need >= 320 calibration rows per layer (min_rows_per_neuron)
    eliminates = method in ("neuron_elimination", "composed")
    train = DataLoader(blobs(1024 if eliminates else 256), batch_size=32, shuffle=True)
    val = DataLoader(blobs(128, sample_seed=7), batch_size=64)
    trainer = pl.Trainer(
        # NeuronElimination shrinks layers at fit end, which ddp_spawn cannot hand back to the main process
        strategy="ddp" if eliminates else "ddp_spawn",
        accelerator="cpu",
        devices=2,
        max_epochs=4 if method == "composed" else 2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
        callbacks=[*make_callbacks(method), DumpRankWeights(out), lc.ArtifactWriter(out / "model.lcz")],
    )
    trainer.fit(model, train, val)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
