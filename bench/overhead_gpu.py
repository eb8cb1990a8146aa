"""The callbacks' overhead on a GPU: ResNet-18 (CIFAR variant) on CIFAR-shaped tensors, each callback vs dense.

The GPU counterpart of ``bench.overhead``, as one short script for a lent GPU machine: 3x32x32 images held on the
device (a fixed random teacher labels them, so the fit learns something), SGD, one fresh process per fit,
configurations interleaved, medians over repeats. Reported per configuration: fit wall time and its ratio to
dense, the compression events' time (``compression_event``), the peak of ``torch.cuda.max_memory_allocated`` and
its ratio to dense, and WeightSharing's search time.

Run on the GPU machine: ``python -m bench.overhead_gpu [--epochs 10] [--repeats 3] [--images 20000]``; on a CPU
(``--device cpu --images 512 --epochs 1 --repeats 1``) it only checks that the script runs. Results go to
``bench/results/overhead_gpu.{json,md}`` (``overhead_gpu_cpu_check`` on a CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch.nn import functional as F
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

import lightning_compress as lc
from bench.common import quiet_trainer, write_results
from lightning_compress.callbacks.base import CompressionCallback
from lightning_compress.models.cifar import resnet18_cifar

CONFIGS: dict[str, Callable[[], list[pl.Callback]]] = {
    "dense": list,
    "NeuronElimination(target_params=0.5)": lambda: [lc.NeuronElimination(target_params=0.5, verbose=False)],
    "SuccessivePruning(0.95)": lambda: [lc.SuccessivePruning(0.95)],
    "Ternarization(mode='qat')": lambda: [lc.Ternarization(mode="qat")],
    "WeightSharing()": lambda: [lc.WeightSharing(progress=False)],
}


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = resnet18_cifar(num_classes=10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def cifar_shaped(images: int, device: str, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Train and validation tensors on ``device``, labelled by a fixed random linear teacher."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(images + images // 10, 3, 32, 32, generator=g)
    teacher = torch.randn(3 * 32 * 32, 10, generator=g)
    y = (x.reshape(len(x), -1) @ teacher).argmax(1)
    x, y = x.to(device), y.to(device)
    return TensorDataset(x[:images], y[:images]), TensorDataset(x[images:], y[images:])


def _loader(data: TensorDataset, batch_size: int, shuffle: bool) -> DataLoader:
    sampler = RandomSampler(data, generator=torch.Generator().manual_seed(0)) if shuffle else SequentialSampler(data)
    return DataLoader(data, sampler=BatchSampler(sampler, batch_size, drop_last=False), batch_size=None)


def run_one(config: str, epochs: int, images: int, device: str) -> dict[str, Any]:
    pl.seed_everything(0, verbose=False)
    train, val = cifar_shaped(images, device)
    model = Classifier()
    callbacks = CONFIGS[config]()
    trainer = quiet_trainer(epochs, callbacks, accelerator="gpu" if device == "cuda" else "cpu", devices=1)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer.fit(model, _loader(train, 128, True), _loader(val, 500, False))
    if device == "cuda":
        torch.cuda.synchronize()
    fit_s = time.perf_counter() - started
    compression = [cb for cb in callbacks if isinstance(cb, CompressionCallback)]
    summary: dict[str, float] = {}
    for cb in compression:
        summary.update(cb.summary())
    return {
        "config": config,
        "fit_s": fit_s,
        "events_s": sum(sum(cb.event_seconds.values()) for cb in compression),
        "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan"),
        "val_acc": float(trainer.callback_metrics.get("val_acc", float("nan"))),
        "search_s": summary.get("weight_sharing/search_s"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print("RESULT " + json.dumps(run_one(args.child, args.epochs, args.images, args.device)), flush=True)
        return
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        names = list(CONFIGS)
        for config in names[repeat % len(names) :] + names[: repeat % len(names)]:
            cmd = [sys.executable, "-m", "bench.overhead_gpu", "--child", config, "--device", args.device]
            cmd += ["--epochs", str(args.epochs), "--images", str(args.images)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                raise RuntimeError(f"{config} failed:\n{proc.stderr[-4000:]}")
            runs.append({"repeat": repeat, **json.loads(lines[-1][len("RESULT ") :])})
            print(runs[-1], flush=True)
    dense = [r for r in runs if r["config"] == "dense"]
    dense_fit = statistics.median(r["fit_s"] for r in dense)
    dense_peak = statistics.median(r["peak_mb"] for r in dense)
    table = []
    for config in CONFIGS:
        rows = [r for r in runs if r["config"] == config]
        fit = statistics.median(r["fit_s"] for r in rows)
        events = statistics.median(r["events_s"] for r in rows)
        peak = statistics.median(r["peak_mb"] for r in rows)
        search = [r["search_s"] for r in rows if r["search_s"] is not None]
        table.append(
            {
                "config": config,
                "fit (s)": f"{fit:.2f}",
                "vs dense": f"{fit / dense_fit:.3f}x",
                "without events": f"{(fit - events) / dense_fit:.3f}x",
                "events (s)": f"{events:.2f}",
                "peak GPU memory (MB)": f"{peak:.0f}",
                "vs dense peak": f"{peak / dense_peak - 1:+.1%}" if dense_peak == dense_peak else "-",
                "WS search / fit": f"{statistics.median(search) / fit:.1%}" if search else "-",
                "val acc": f"{100 * statistics.median(r['val_acc'] for r in rows):.2f}",
            }
        )
    name = "overhead_gpu" if args.device == "cuda" else "overhead_gpu_cpu_check"
    notes = (
        f"`python -m bench.overhead_gpu --epochs {args.epochs} --repeats {args.repeats} --images {args.images} "
        f"--device {args.device}`: ResNet-18 (CIFAR) on CIFAR-shaped tensors held on the device, medians over repeats."
    )
    print(write_results(name, {"args": vars(args), "runs": runs}, table, notes).read_text())


if __name__ == "__main__":
    main()
