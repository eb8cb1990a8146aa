"""Every callback with no arguments on a user's torchvision network, on real Fashion-MNIST as 3x32x32 images.

As a new user would (issue: "real networks and real habits"): a plain ``LightningModule`` holding
``torchvision.models.resnet18(num_classes=10)`` or ``mobilenet_v2(num_classes=10)`` as ``self.net`` (Adam 1e-3,
metric ``val_acc``), Fashion-MNIST padded to 32x32 and repeated over 3 channels, a short fit (2 epochs of 4,000
training images, 1,000 held-out validation images, batch 128), each callback added with no arguments. Test accuracy
is the reloaded artifact's (saved from the backbone, ``lc.save(model.net)``, the habit the issue names), on 2,000
test images; the drop is against the dense run of the same seed. Fit wall time includes the callbacks' events.

    python -m bench.resnet_defaults_fmnist --nets resnet18 --seeds 0
"""

from __future__ import annotations

import argparse
import ast
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import lightning_compress as lc
from bench.common import mean_std, quiet_trainer, write_results
from bench.defaults_fmnist import UserClassifier, accuracy, fmnist_tensors
from bench.guard_cost import GuardClock
from lightning_compress.functional.batchnorm import recalibrate_batch_norms_

CALLBACKS: dict[str, Callable[[], pl.Callback] | None] = {
    "dense": None,
    # the dense fit with its BatchNorm statistics re-estimated as the callbacks do after replacing weights: in a
    # short fit the running statistics lag, and re-estimating them alone moves the accuracy (measured, not assumed)
    "dense, BatchNorm re-estimated": None,
    "NeuronElimination()": lambda: lc.NeuronElimination(verbose=False),
    "SuccessivePruning()": lambda: lc.SuccessivePruning(),
    # the former default guards: a validation metric against its best (the defaults now judge each event's own cost)
    "SuccessivePruning(guard='validation')": lambda: lc.SuccessivePruning(guard="validation"),
    "NeuronElimination(guard='validation')": lambda: lc.NeuronElimination(guard="validation", verbose=False),
    "Ternarization()": lambda: lc.Ternarization(),
    "WeightSharing()": lambda: lc.WeightSharing(progress=False),
}
NETS: dict[str, Callable[[], nn.Module]] = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=10),
}


def as_rgb32(data: TensorDataset, count: int) -> TensorDataset:
    """The first ``count`` images padded to 32x32 and repeated over 3 channels (a torchvision network's input)."""
    x, y = data.tensors
    return TensorDataset(F.pad(x[:count], (2, 2, 2, 2)).expand(-1, 3, -1, -1).contiguous(), y[:count])


def run(net: str, name: str, seed: int, data: dict[str, TensorDataset], epochs: int, out: Path) -> dict[str, Any]:
    pl.seed_everything(seed, verbose=False)
    model = UserClassifier(NETS[net]())
    dense_params = sum(p.numel() for p in model.net.parameters())
    factory = CALLBACKS[name]
    callback = None if factory is None else factory()
    trainer = quiet_trainer(epochs, [] if callback is None else [callback], default_root_dir=out)
    started = time.perf_counter()
    with GuardClock() as guard:
        train, val = DataLoader(data["train"], batch_size=128, shuffle=True), DataLoader(data["val"], batch_size=500)
        trainer.fit(model, train, val)
    fit_s = time.perf_counter() - started
    if name.startswith("dense, BatchNorm"):
        batches = (x for i, (x, _) in enumerate(DataLoader(data["train"], batch_size=128, shuffle=True)) if i < 20)
        recalibrate_batch_norms_(model.net, batches)
    path = lc.save(model.net, out / f"{net}-{seed}-{name.rstrip('()')}.lcz")  # the backbone, as users save it
    loaded = lc.load(path, model=NETS[net]())
    report = lc.size_report(path)
    events = {} if callback is None else dict(getattr(callback, "event_seconds", {}))
    return {
        "net": net,
        "callback": name,
        "seed": seed,
        "val_acc": float(trainer.callback_metrics.get("val_acc", float("nan"))),
        "test_acc": accuracy(loaded, data["test"]),
        "params_fraction": sum(p.numel() for p in loaded.parameters()) / dense_params,
        "nonzeros_fraction": report.nonzeros / report.params,
        "file_bytes": path.stat().st_size,
        "ratio": report.ratio,
        "sources": sorted(set(report.sources.values())),
        "fit_s": fit_s,
        "event_s": sum(events.values()),
        # the event guard's own work (caching, BatchNorm re-estimations, scoring) and its passes over its samples
        "guard_s": guard.seconds,
        "guard_passes": guard.passes,
        # WeightSharing's search, in passes over its cached validation samples
        "search_passes": None
        if callback is None
        else getattr(callback, "_state", {}).get("validation_set_equivalents"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    parser.add_argument("--callbacks", nargs="+", default=list(CALLBACKS), choices=list(CALLBACKS))
    parser.add_argument("--train-images", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--name", default="resnet_defaults_fmnist")
    parser.add_argument(
        "--rows", help="tabulate the rows an interrupted run of the same arguments printed (its log) instead of fitting"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    tensors = fmnist_tensors()
    data = {
        "train": as_rgb32(tensors["train"], args.train_images),
        "val": as_rgb32(tensors["val"], 1000),
        "test": as_rgb32(tensors["test"], 2000),
    }
    runs: list[dict[str, Any]] = []
    if args.rows:  # each printed row is a dict literal on its own line
        lines = Path(args.rows).read_text().splitlines()
        runs = [ast.literal_eval(line) for line in lines if line.startswith("{'net'")]
        args.nets = [n for n in args.nets if any(r["net"] == n for r in runs)]
    with tempfile.TemporaryDirectory() as tmp:
        for net in [] if args.rows else args.nets:
            for seed in args.seeds:
                for name in args.callbacks:
                    row = run(net, name, seed, data, args.epochs, Path(tmp))
                    runs.append(row)
                    print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    table = []
    for net in args.nets:
        dense = {r["seed"]: r["test_acc"] for r in runs if r["net"] == net and r["callback"] == "dense"}
        dense_bn = {r["seed"]: r["test_acc"] for r in runs if r["net"] == net and r["callback"].startswith("dense,")}
        # the faster of the two dense fits (the first fit of a process also warms up)
        dense_fit = min((r["fit_s"] for r in runs if r["net"] == net and r["callback"].startswith("dense")), default=0)
        for name in args.callbacks:
            rows = [r for r in runs if r["net"] == net and r["callback"] == name]
            if not rows:  # an interrupted run (``--rows``) may not have reached it
                continue
            acc = mean_std([100 * r["test_acc"] for r in rows])
            drops = [100 * (dense[r["seed"]] - r["test_acc"]) for r in rows if r["seed"] in dense]
            drops_bn = [100 * (dense_bn[r["seed"]] - r["test_acc"]) for r in rows if r["seed"] in dense_bn]
            table.append(
                {
                    "net": net,
                    "callback": name,
                    "test acc (%)": f"{acc[0]:.2f} ± {acc[1]:.2f}",
                    "drop (pt)": f"{mean_std(drops)[0]:.2f}" if drops else "",
                    "drop vs dense with BN re-estimated (pt)": f"{mean_std(drops_bn)[0]:.2f}" if drops_bn else "",
                    "worst vs BN re-estimated (pt)": f"{max(drops_bn):.2f}" if drops_bn else "",
                    "params kept": f"{mean_std([r['params_fraction'] for r in rows])[0]:.1%}",
                    "non-zeros": f"{mean_std([r['nonzeros_fraction'] for r in rows])[0]:.1%}",
                    "file (B)": f"{mean_std([r['file_bytes'] for r in rows])[0]:,.0f}",
                    "ratio": f"{mean_std([r['ratio'] for r in rows])[0]:.1f}x",
                    "fit (s)": f"{mean_std([r['fit_s'] for r in rows])[0]:.0f}",
                    "fit / dense": f"{mean_std([r['fit_s'] for r in rows])[0] / dense_fit:.2f}x" if dense_fit else "",
                    "events (s)": f"{mean_std([r['event_s'] for r in rows])[0]:.1f}",
                    "guard passes": ", ".join(str(r["guard_passes"]) for r in rows if r.get("guard_passes")),
                    "search passes": ", ".join(
                        f"{r['search_passes']:.1f}" for r in rows if r.get("search_passes") is not None
                    ),
                }
            )
    notes = (
        f"Seeds {sorted({r['seed'] for r in runs})}; {args.epochs} epochs of {args.train_images} Fashion-MNIST "
        "training images as 3x32x32, "
        "a plain LightningModule (Adam 1e-3, batch 128, metric `val_acc`), one callback with no arguments. Test "
        "accuracy (2,000 images) of the backbone reloaded from its artifact; drop against the dense run of the same "
        "seed; ratio against fp32 of the original network."
    )
    print(write_results(args.name, {"seeds": args.seeds, "runs": runs}, table, notes).read_text())


if __name__ == "__main__":
    main()
