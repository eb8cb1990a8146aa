"""WeightSharing on LeNet-300-100 / real Fashion-MNIST vs k-means weight sharing at the same number of values.

One run: train the dense reference (the `share_lenet300_fmnist` recipe = dense recipe + WeightSharing at fit end),
snapshot the dense weights just before sharing, then compare on the **test** set:

* dense fp32 (snapshot);
* ours: uniform bins + NSGA-II + merge, chosen on the validation split (no retraining of the shared values);
* k-means (scipy ``kmeans2``, k-means++ init) with the same number of shared values, one codebook for the network.

Both shared models are stored with the same ``codebook`` codec; bits per weight = artifact bytes * 8 / parameters.
Run: ``python -m bench.share_lenet300_fmnist [--seeds 0 1 2]``.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

import lightning_compress as lc
from bench.common import composed, mean_sd_text, quiet_run, write_results
from lightning_compress.cli import train
from lightning_compress.codec import CodecSpec
from lightning_compress.functional.weight_sharing import (
    WeightSharingProblem,
    entropy_bits,
    huffman_average_length,
    kmeans_binning,
    select_parameters,
)
from lightning_compress.module import evaluate_accuracy

NAME = "share_lenet300_fmnist"


class SnapshotBeforeCompression(pl.Callback):
    """Keep a copy of the backbone at ``on_train_end`` (it runs before the compression callbacks, listed later)."""

    def __init__(self) -> None:
        self.snapshot: nn.Module | None = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.snapshot = copy.deepcopy(lc.saving.artifact_module(pl_module)).cpu()


def artifact_bits_per_weight(model: nn.Module, codebook: list[float], counts: list[int]) -> tuple[int, float]:
    names = [n for n, _ in select_parameters(model, "all")]
    spec = CodecSpec("codebook", {"codebook": codebook, "counts": counts})
    with tempfile.TemporaryDirectory() as tmp:
        path = lc.save(model, Path(tmp) / "m.lcz", codecs=dict.fromkeys(names, spec))
        report = lc.size_report(path)
        back = lc.load(path)
    x = torch.randn(8, 1, 28, 28)
    if not torch.equal(back(x), model.eval()(x)):
        raise RuntimeError("artifact round trip changed the outputs")
    return report.artifact_bytes, 8 * report.artifact_bytes / report.params


def run_seed(seed: int, epochs: int) -> dict[str, Any]:
    overrides = [
        *quiet_run(seed, epochs),
        "compress.weight_sharing.progress=false",
        "+callbacks.snapshot._target_=bench.share_lenet300_fmnist.SnapshotBeforeCompression",
    ]
    with composed(NAME, overrides) as cfg:
        metrics, objects = train(cfg)
    dm = objects["datamodule"]
    test_loader = dm.test_dataloader()
    # Hydra imports this module by name, so its class is not this file's __main__ class: match by name
    snap = [cb for cb in objects["trainer"].callbacks if type(cb).__name__ == "SnapshotBeforeCompression"]
    dense = snap[0].snapshot if snap else None
    if dense is None:
        raise RuntimeError("the snapshot callback did not run")
    dense_acc = evaluate_accuracy(dense, test_loader)

    # k-means at the same number of shared values, one network-wide codebook (the classic baseline)
    k_shared = int(metrics["weight_sharing/num_shared"])
    kmeans_model = copy.deepcopy(dense)
    params = [p for _, p in select_parameters(kmeans_model, "all")]
    problem = WeightSharingProblem(params, lambda: 0.0)
    started = time.perf_counter()
    binning = kmeans_binning(problem.values, k_shared, seed=seed)
    kmeans_s = time.perf_counter() - started
    problem.write(binning)
    km_bytes, km_bpw = artifact_bits_per_weight(
        kmeans_model, binning.codebook.float().tolist(), binning.counts.tolist()
    )
    ours_bytes = metrics["size/artifact_bytes"]
    return {
        "seed": seed,
        "dense_test_acc": dense_acc,
        "ours_test_acc": metrics["test/acc_artifact"],
        "ours_val_acc": metrics["weight_sharing/metric"],
        "ours_val_acc_unshared": metrics["weight_sharing/baseline_metric"],
        "ours_num_shared": k_shared,
        "ours_k": int(metrics["weight_sharing/k"]),
        "ours_merged": bool(metrics["weight_sharing/merged"]),
        "ours_bytes": ours_bytes,
        "ours_bits_per_weight": 8 * ours_bytes / metrics["size/params"],
        "ours_entropy_bits": metrics["weight_sharing/entropy_bits"],
        "ours_huffman_bits": metrics["weight_sharing/huffman_bits"],
        "ours_search_s": metrics["weight_sharing/search_s"],
        "ours_evaluations": int(metrics["weight_sharing/evaluations"]),
        "kmeans_test_acc": evaluate_accuracy(kmeans_model, test_loader),
        "kmeans_bytes": km_bytes,
        "kmeans_bits_per_weight": km_bpw,
        "kmeans_entropy_bits": entropy_bits(binning.counts),
        "kmeans_huffman_bits": huffman_average_length(binning.counts),
        "kmeans_s": kmeans_s,
        "fp32_bytes": metrics["size/fp32_bytes"],
    }


def fmt(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    return mean_sd_text([v * scale for v in values], digits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(seed, args.epochs))
        print(runs[-1], flush=True)
    col = lambda key: [r[key] for r in runs]  # noqa: E731
    table = [
        {
            "method": "dense fp32",
            "shared values": "-",
            "bits/weight": "32",
            "test acc (%)": fmt(col("dense_test_acc"), 100),
            "drop (pt)": "-",
            "time (s)": "-",
            "ratio": "1.00",
        },
        {
            "method": "ours: uniform bins + NSGA-II + merge",
            "shared values": fmt(col("ours_num_shared"), digits=1),
            "bits/weight": fmt(col("ours_bits_per_weight"), digits=3),
            "test acc (%)": fmt(col("ours_test_acc"), 100),
            "drop (pt)": fmt([d - o for d, o in zip(col("dense_test_acc"), col("ours_test_acc"), strict=True)], 100),
            "time (s)": fmt(col("ours_search_s"), digits=1),
            "ratio": fmt([r["fp32_bytes"] / r["ours_bytes"] for r in runs]),
        },
        {
            "method": "k-means, same number of values",
            "shared values": fmt(col("ours_num_shared"), digits=1),
            "bits/weight": fmt(col("kmeans_bits_per_weight"), digits=3),
            "test acc (%)": fmt(col("kmeans_test_acc"), 100),
            "drop (pt)": fmt([d - o for d, o in zip(col("dense_test_acc"), col("kmeans_test_acc"), strict=True)], 100),
            "time (s)": fmt(col("kmeans_s"), digits=1),
            "ratio": fmt([r["fp32_bytes"] / r["kmeans_bytes"] for r in runs]),
        },
    ]
    notes = (
        f"LeNet-300-100, real Fashion-MNIST, {args.epochs} epochs dense training, then WeightSharing (defaults of "
        "`conf/compress/weight_sharing.yaml`) on the 6,000-image validation split; test accuracy on the 10,000 test "
        "images; bits/weight = artifact file bytes x 8 / 266,610 parameters (codebook, counts, header included). "
        f"Index entropy (ours) {fmt(col('ours_entropy_bits'), digits=3)} bits, Huffman (paper's measure) "
        f"{fmt(col('ours_huffman_bits'), digits=3)} bits; search time is NSGA-II + merge "
        f"({fmt(col('ours_evaluations'), digits=0)} validation passes)."
    )
    path = write_results(NAME, {"runs": runs, "seeds": args.seeds, "epochs": args.epochs}, table, notes)
    print(path.read_text())


if __name__ == "__main__":
    main()
