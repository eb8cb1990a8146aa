"""Every callback added with no arguments to a user's own LightningModule, on real Fashion-MNIST.

As a new user would: a plain ``LightningModule`` (its own ``training_step``, a validation metric named ``val_acc``,
Adam 1e-3), its own in-memory DataLoaders (55,000 train / 5,000 held-out validation / the 10,000 test images), and one
callback with no arguments. Two networks: a 784-300-100-10 MLP (6 epochs) and LeNet-5 with Caffe's sizes (3 epochs).
The test accuracy is the reloaded ``.lcz`` artifact's, and the drop is against the dense run of the same seed.

    python -m bench.defaults_fmnist --seeds 0 1 2
    python -m bench.defaults_fmnist --callbacks dense "RateAware()" --name defaults_fmnist_rate
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import lightning_compress as lc
from bench.common import RESULTS, mean_std, quiet_trainer, write_results
from lightning_compress.data import FashionMNISTDataModule

CALLBACKS: dict[str, Callable[[], pl.Callback] | None] = {
    "dense": None,
    "NeuronElimination()": lambda: lc.NeuronElimination(verbose=False),
    "SuccessivePruning()": lambda: lc.SuccessivePruning(),
    # the former default guards: a validation metric against its best (the defaults now judge each event's own cost)
    "SuccessivePruning(guard='validation')": lambda: lc.SuccessivePruning(guard="validation"),
    "NeuronElimination(guard='validation')": lambda: lc.NeuronElimination(guard="validation", verbose=False),
    "Ternarization()": lambda: lc.Ternarization(),
    "WeightSharing()": lambda: lc.WeightSharing(progress=False),
    # measured as "RateAware()" when its default was this guard; it now refuses without a target (2.57 pt on LeNet-5)
    "RateAware()": lambda: lc.RateAware(accuracy_budget=0.01),
    "RateAware(guard='validation')": lambda: lc.RateAware(accuracy_budget=0.01, guard="validation"),
    # the same default, in a fit without validation data: the guard gives way to the loss-free rule
    "NeuronElimination(), no validation": lambda: lc.NeuronElimination(verbose=False),
}
NO_VALIDATION = {"NeuronElimination(), no validation"}
EPOCHS = {"mlp": 6, "cnn": 3}


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
    )


def cnn() -> nn.Module:
    """LeNet-5 with Caffe's sizes (conv20-pool-conv50-pool-fc500-fc10, 431k parameters), written out by the user."""
    return nn.Sequential(
        nn.Conv2d(1, 20, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(800, 500),
        nn.ReLU(),
        nn.Linear(500, 10),
    )


class UserClassifier(pl.LightningModule):
    """What a user writes: no lightning_compress base class, its own metric names."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def fmnist_tensors() -> dict[str, TensorDataset]:
    """Train (55,000) / validation (5,000, held out of train) / test (10,000), normalised, in memory."""
    from torchvision.datasets import FashionMNIST

    dm = FashionMNISTDataModule()
    dm.prepare_data()
    root = Path(dm.data_dir)
    splits = {}
    for train in (True, False):
        ds = FashionMNIST(str(root), train=train, download=False)
        x = (ds.data.float().unsqueeze(1) / 255.0 - 0.2860) / 0.3530
        splits[train] = (x, ds.targets)
    perm = torch.randperm(60000, generator=torch.Generator().manual_seed(1234))
    x, y = splits[True]
    return {
        "train": TensorDataset(x[perm[:55000]], y[perm[:55000]]),
        "val": TensorDataset(x[perm[55000:]], y[perm[55000:]]),
        "test": TensorDataset(*splits[False]),
    }


@torch.no_grad()
def accuracy(net: nn.Module, data: TensorDataset) -> float:
    net.eval()
    x, y = data.tensors
    correct = sum(int((net(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(2000), y.split(2000), strict=True))
    return correct / len(y)


def run(
    arch: str, name: str, seed: int, data: dict[str, TensorDataset], out: Path, epochs: int | None = None
) -> dict[str, Any]:
    pl.seed_everything(seed, verbose=False)
    build = mlp if arch == "mlp" else cnn
    model = UserClassifier(build())
    dense_params = sum(p.numel() for p in model.parameters())
    factory = CALLBACKS[name]
    callbacks = [] if factory is None else [factory()]
    trainer = quiet_trainer(epochs or EPOCHS[arch], callbacks, default_root_dir=out)
    train = DataLoader(data["train"], batch_size=128, shuffle=True)
    val = DataLoader(data["val"], batch_size=1000)
    started = time.perf_counter()
    trainer.fit(model, train, None if name in NO_VALIDATION else val)
    fit_s = time.perf_counter() - started
    path = lc.save(model, out / f"{arch}-{seed}-{name.rstrip('()')}.lcz")
    fresh = UserClassifier(build())
    loaded = lc.load(path, model=fresh)
    report = lc.size_report(path)
    return {
        "arch": arch,
        "callback": name,
        "seed": seed,
        "val_acc": float(trainer.callback_metrics.get("val_acc", float("nan"))),
        "test_acc": accuracy(loaded, data["test"]),
        "test_acc_in_memory": accuracy(model, data["test"]),
        "params_fraction": sum(p.numel() for p in loaded.parameters()) / dense_params,
        "nonzeros_fraction": report.nonzeros / dense_params,
        "file_bytes": path.stat().st_size,
        "ratio": report.ratio,
        "fit_s": fit_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--archs", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    parser.add_argument(
        "--callbacks", nargs="+", default=[c for c in CALLBACKS if c not in NO_VALIDATION], choices=list(CALLBACKS)
    )
    parser.add_argument(
        "--reference", help="take the dense runs from this results file (same seeds and code) instead of training them"
    )
    parser.add_argument("--name", default="defaults_fmnist")
    parser.add_argument("--epochs", type=int, help="epochs of every fit (default: MLP 6, CNN 3)")
    parser.add_argument("--train-images", type=int, default=55000, help="the first N of the 55,000 training images")
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = fmnist_tensors()
    data["train"] = TensorDataset(*(t[: args.train_images] for t in data["train"].tensors))
    runs: list[dict[str, Any]] = []
    if args.reference:
        stored = json.loads((RESULTS / f"{args.reference}.json").read_text())["runs"]
        runs = [r for r in stored if r["callback"] == "dense" and r["arch"] in args.archs and r["seed"] in args.seeds]
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            for seed in args.seeds:
                for name in args.callbacks:
                    if name == "dense" and args.reference:
                        continue
                    row = run(arch, name, seed, data, Path(tmp), args.epochs)
                    runs.append(row)
                    print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    table = []
    for arch in args.archs:
        dense = {r["seed"]: r["test_acc"] for r in runs if r["arch"] == arch and r["callback"] == "dense"}
        for name in ["dense", *[c for c in args.callbacks if c != "dense"]] if args.reference else args.callbacks:
            rows = [r for r in runs if r["arch"] == arch and r["callback"] == name]
            acc = mean_std([100 * r["test_acc"] for r in rows])
            drops = [100 * (dense[r["seed"]] - r["test_acc"]) for r in rows if r["seed"] in dense]
            drop = mean_std(drops) if drops else (float("nan"), 0.0)
            table.append(
                {
                    "net": arch,
                    "callback": name,
                    "test acc (%)": f"{acc[0]:.2f} ± {acc[1]:.2f}",
                    "drop (pt)": f"{drop[0]:.2f} ± {drop[1]:.2f}",
                    "worst drop (pt)": f"{max(drops):.2f}" if drops else "",
                    "params kept": f"{mean_std([r['params_fraction'] for r in rows])[0]:.1%}",
                    "non-zeros": f"{mean_std([r['nonzeros_fraction'] for r in rows])[0]:.1%}",
                    "file (B)": f"{mean_std([r['file_bytes'] for r in rows])[0]:,.0f}",
                    "ratio": f"{mean_std([r['ratio'] for r in rows])[0]:.1f}x",
                    "fit (s)": f"{mean_std([r['fit_s'] for r in rows])[0]:.0f}",
                }
            )
    epochs = f"{args.epochs} epochs" if args.epochs else f"MLP {EPOCHS['mlp']} epochs, CNN {EPOCHS['cnn']} epochs"
    notes = (
        f"Seeds {args.seeds}. A plain LightningModule (metric `val_acc`, Adam 1e-3, batch 128), one callback with no "
        f"arguments; {args.train_images:,} training images, {epochs}. Test accuracy of the reloaded artifact; "
        "drop against the dense run of the same seed; ratio against fp32 of the original model."
    )
    print(write_results(args.name, {"seeds": args.seeds, "runs": runs}, table, notes).read_text())


if __name__ == "__main__":
    main()
