"""How the callbacks' cost grows with the model: LeNet-300-100 to ResNet-50 and ViT-B/16, on synthetic data.

Real images are not needed to time compression events: each net trains on random tensors of its input size
(784 features; 3x224x224 images) held in memory, with random labels, SGD with momentum. Every configuration fits in
its own fresh process for ``--steps`` optimizer steps (batch ``--batch``), with one validation (``--val-images``)
at the end of the epoch. Per configuration:

* the time of every compression event (``compression_event``: stages, rounds, the search, BatchNorm
  re-estimation), their count and total, and that total in **dense training steps** of the same fit (the median
  step of the dense fit, measured in the same run);
* the training step (median of the fit's steps, events excluded: a step is timed from ``on_train_batch_start`` of
  the first callback to ``on_train_batch_end`` of the last, and a step holding an event is left out);
* peak memory: the largest process RSS during the fit and its rise above the RSS before it, and on a GPU
  ``torch.cuda.max_memory_allocated``, each against the dense fit's, in model fp32 sizes;
* the bytes each callback alone still holds after ``fit`` (tensors, arrays and byte strings reachable from it and
  not from the model: the SuccessivePruning stream the model's representation shares is the artifact's content).

Configurations: ``dense``, ``NeuronElimination(target_params=0.5)``, ``SuccessivePruning(0.95)``,
``Ternarization()``, ``WeightSharing()`` and the ``full`` composition (NeuronElimination 0.7 -> SuccessivePruning
0.95 -> WeightSharing). A log-log plot of each callback's event time against the parameters is drawn, with the
slope fitted from ResNet-18 to ViT-B/16.

Settings (``--settings``, default ``b32 b16``): ``b32`` (batch 32, 32 validation images, a 1000-class head),
``b16`` (a new user's try: batch 16, 64 validation images, a 100-class head, random labels over its classes) and
``b1`` (batch 1: the events' memory with almost no activations to hide it). Each configuration gets a row for all
its events and one per event: seconds, dense steps, passes over the validation images (the event guard's, the
search's) and the peak resident set during it, against the dense fit's.

Run: ``python -m bench.scale [--nets lenet300 resnet18 resnet50 vit_b_16] [--steps 16] [--settings b32 b16]
[--device cpu|cuda]``; results in ``bench/results/scale.{json,md,png}`` (``--name`` to change). On a GPU machine:
``python -m bench.scale --device cuda --name scale_gpu``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
import torchvision
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

import lightning_compress as lc
from bench.common import RESULTS, PeakRss, held_bytes, kept_by_model, quiet_trainer, write_results
from bench.defaults_fmnist import UserClassifier
from lightning_compress.callbacks.base import CompressionCallback

NAME = "scale"


def lenet300(num_classes: int = 10) -> nn.Module:
    """LeNet-300-100 on flattened 28x28 inputs."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, num_classes)
    )


#: net -> (constructor, input shape of one example)
NETS: dict[str, tuple[Callable[..., nn.Module], tuple[int, ...]]] = {
    "lenet300": (lenet300, (1, 28, 28)),
    "resnet18": (torchvision.models.resnet18, (3, 224, 224)),
    "resnet50": (torchvision.models.resnet50, (3, 224, 224)),
    "vit_b_16": (torchvision.models.vit_b_16, (3, 224, 224)),
}

CONFIGS: dict[str, Callable[[], list[pl.Callback]]] = {
    "dense": list,
    # what a new user adds first: one callback, no arguments
    "NeuronElimination()": lambda: [lc.NeuronElimination(verbose=False)],
    "SuccessivePruning()": lambda: [lc.SuccessivePruning()],
    "NeuronElimination(target_params=0.5)": lambda: [lc.NeuronElimination(target_params=0.5, verbose=False)],
    "SuccessivePruning(0.95)": lambda: [lc.SuccessivePruning(0.95)],
    "Ternarization()": lambda: [lc.Ternarization()],
    "WeightSharing()": lambda: [lc.WeightSharing(progress=False)],
    "full": lambda: [
        lc.NeuronElimination(target_params=0.7, verbose=False),
        lc.SuccessivePruning(0.95),
        lc.WeightSharing(progress=False),
    ],
}


#: The settings the events' bounds are checked in: ``b32`` (batch 32, 32 validation images, a 1000-class head, labels
#: from 10 classes), ``b16``, a new user's try (batch 16, 64 validation images, a 100-class head, random labels
#: over its 100 classes), and ``b1``: the smaller the batch, the less a step's activations hide the events' buffers.
SETTINGS: dict[str, dict[str, int]] = {
    "b32": {"batch": 32, "val_images": 32, "classes": 1000, "label_classes": 10},
    "b16": {"batch": 16, "val_images": 64, "classes": 100, "label_classes": 100},
    # the events' own memory, with almost no activations to hide it
    "b1": {"batch": 1, "val_images": 64, "classes": 100, "label_classes": 100},
}


class ScaleModule(UserClassifier):
    """A user's plain classifier (``bench.defaults_fmnist``) with SGD + momentum (the ImageNet habit)."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


class StepTimer(pl.Callback):
    """Wall time of each training step, from the first callback's batch start to the last one's batch end.

    Put first and last in the callback list (two instances sharing ``times``): what the callbacks between do in
    their batch hooks counts, so a step that held an event is known by the events' counters and left out.
    """

    def __init__(self, times: list[float], marks: list[float], last: bool) -> None:
        self.times, self.marks, self.last = times, marks, last

    def on_train_batch_start(self, *args: Any) -> None:
        if not self.last:
            self._sync()
            self.marks.append(time.perf_counter())

    def on_train_batch_end(self, *args: Any) -> None:
        if self.last and self.marks:
            self._sync()
            self.times.append(time.perf_counter() - self.marks[-1])

    @staticmethod
    def _sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()


def _loader(data: TensorDataset, batch_size: int, shuffle: bool) -> DataLoader:
    sampler = RandomSampler(data, generator=torch.Generator().manual_seed(0)) if shuffle else SequentialSampler(data)
    return DataLoader(data, sampler=BatchSampler(sampler, batch_size, drop_last=False), batch_size=None)


def _count_scored_samples(log: list[tuple[float, int]]) -> None:
    """Record (time, samples) of every pass of a validation scorer (the event guard's, WeightSharing's search)."""
    from lightning_compress.callbacks import validation

    outputs, error_on_all = validation.ValidationScorer.outputs, validation.ValidationScorer.error_on_all

    def counted_outputs(self: Any, model: nn.Module, batches: Any) -> Any:
        log.append((time.perf_counter(), sum(len(y) for _, y in batches)))
        return outputs(self, model, batches)

    def counted_error_on_all(self: Any, *args: Any) -> Any:
        error, samples = error_on_all(self, *args)
        log.append((time.perf_counter(), samples))
        return error, samples

    validation.ValidationScorer.outputs = counted_outputs  # type: ignore[method-assign]
    validation.ValidationScorer.error_on_all = counted_error_on_all  # type: ignore[method-assign,assignment]


def run_one(
    net: str,
    config: str,
    steps: int,
    batch: int,
    val_images: int,
    device: str,
    classes: int = 1000,
    label_classes: int = 10,
    judge_at_chance: bool = True,
) -> dict[str, Any]:
    """One fit in this process; its figures.

    ``judge_at_chance``: the event guard judges events on a model at chance instead of deferring them. On random
    labels every model is at chance, and the deferral (the library's rule) would leave the events this bench times
    unrun; their cost, not their accuracy, is measured here.
    """
    pl.seed_everything(0, verbose=False)
    if judge_at_chance:
        from lightning_compress.callbacks.event_guard import EventGuard

        EventGuard.at_chance = lambda self, before: False  # type: ignore[method-assign]
    build, shape = NETS[net]
    model = ScaleModule(build(num_classes=classes))
    params = sum(p.numel() for p in model.parameters())
    train = TensorDataset(torch.randn(steps * batch, *shape), torch.randint(0, label_classes, (steps * batch,)))
    val = TensorDataset(torch.randn(val_images, *shape), torch.randint(0, label_classes, (val_images,)))
    scored: list[tuple[float, int]] = []
    _count_scored_samples(scored)
    callbacks = CONFIGS[config]()
    times: list[float] = []
    marks: list[float] = []
    event_counts_before: list[int] = []
    compression = [cb for cb in callbacks if isinstance(cb, CompressionCallback)]

    class EventSteps(pl.Callback):
        """Which steps held an event (the event counters moved during them)."""

        def on_train_batch_start(self, *args: Any) -> None:
            event_counts_before.append(sum(sum(cb.event_counts.values()) for cb in compression))

    held_steps: list[bool] = []

    class EventStepsEnd(pl.Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            held_steps.append(sum(sum(cb.event_counts.values()) for cb in compression) != event_counts_before[-1])

    every = [EventSteps(), StepTimer(times, marks, last=False), *callbacks, StepTimer(times, marks, last=True)]
    every.append(EventStepsEnd())
    with tempfile.TemporaryDirectory() as tmp:
        trainer = quiet_trainer(
            1,
            every,
            accelerator="gpu" if device == "cuda" else "cpu",
            devices=1,
            default_root_dir=tmp,
            num_sanity_val_steps=0,
            max_steps=steps,
        )
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        before = PeakRss.now()
        with PeakRss(series=True) as rss:
            started = time.perf_counter()
            trainer.fit(model, _loader(train, batch, True), _loader(val, min(batch, val_images), False))
            fit_s = time.perf_counter() - started
        cuda_peak = torch.cuda.max_memory_allocated() if device == "cuda" else 0
        save_started = time.perf_counter()
        artifact = lc.save(model, f"{tmp}/model.lcz")
        save_s = time.perf_counter() - save_started
        size = artifact.stat().st_size
    events: dict[str, dict[str, Any]] = {}
    for cb in compression:
        for event, seconds in cb.event_seconds.items():
            spans = [(start, end) for name, start, end in cb.event_log if name == event]
            events[f"{type(cb).__name__}.{event}"] = {
                "seconds": seconds,
                "count": cb.event_counts[event],
                "each_s": [round(end - start, 2) for start, end in spans],
                "peak_rss_mb": max((rss.peak_between(a, b) for a, b in spans), default=0) / 2**20,
                "scored_samples": sum(n for t, n in scored if any(a <= t <= b for a, b in spans)),
            }
    clean = [t for t, held in zip(times, held_steps, strict=False) if not held]
    return {
        "net": net,
        "config": config,
        "params": params,
        "model_mb": params * 4 / 2**20,
        "steps": trainer.global_step,
        "batch": batch,
        "fit_s": fit_s,
        "step_s": statistics.median(clean) if clean else float("nan"),
        "events": events,
        "events_s": sum(e["seconds"] for e in events.values()),
        "val_images": val_images,
        "classes": classes,
        "scored_samples": sum(n for _, n in scored),
        "peak_rss_mb": rss.peak / 2**20,
        "rss_rise_mb": (rss.peak - before) / 2**20,
        "cuda_peak_mb": cuda_peak / 2**20,
        # what only the callback keeps alive: the stream SuccessivePruning shares with the model's representation
        # is the artifact's content, not an extra copy
        "held_bytes": {type(cb).__name__: held_bytes(cb, kept_by_model(model)) for cb in compression},
        "held_bytes_with_shared": {type(cb).__name__: held_bytes(cb) for cb in compression},
        "weight_sharing": {k: v for cb in compression for k, v in cb.summary().items() if "weight_sharing" in k},
        "artifact_bytes": size,
        "save_s": save_s,
    }


def _child(args: argparse.Namespace, net: str, config: str, setting: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.scale", "--child", config, "--net", net, "--steps", str(args.steps)]
    chosen = SETTINGS[setting]
    cmd += ["--batch", str(_batch(args, net, chosen["batch"]))]
    cmd += ["--val-images", str(_per_net(args.val_for, net, chosen["val_images"]))]
    cmd += ["--classes", str(chosen["classes"]), "--label-classes", str(chosen["label_classes"])]
    cmd += ["--device", args.device] + (["--defer-at-chance"] if args.defer_at_chance else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{net} {config} failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def _per_net(items: list[str], net: str, default: int) -> int:
    """``net=value`` overrides (``--batch-for vit_b_16=8``)."""
    for item in items:
        name, _, value = item.partition("=")
        if name == net:
            return int(value)
    return default


def _batch(args: argparse.Namespace, net: str, batch: int) -> int:
    if any(item.partition("=")[0] == net for item in args.batch_for):
        return _per_net(args.batch_for, net, batch)
    # LeNet's calibration needs rows (NeuronElimination: 10 per neuron); its step is cheap at any batch
    return max(batch, 256) if net == "lenet300" else batch


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (setting, net, configuration): a row for all its events, then one per event; against the dense fit."""
    table = []
    for run in runs:
        setting = run.get("setting", "b32")
        dense = next(
            r for r in runs if r["net"] == run["net"] and r["config"] == "dense" and r.get("setting", "b32") == setting
        )
        step = dense["step_s"]
        model_mb = run["model_mb"]
        held = sum(run["held_bytes"].values())
        passes = run.get("scored_samples", 0) / max(run.get("val_images", 1), 1)
        common = {
            "setting": setting,
            "net": run["net"],
            "params": f"{run['params'] / 1e6:.2f}M",
            "configuration": run["config"],
            "batch": run["batch"],
        }
        table.append(
            {
                **common,
                "event": "(all)",
                # nan: every step of the fit overlapped a compression event (no clean step to time)
                "step (s)": f"{run['step_s']:.3f}" if run["step_s"] == run["step_s"] else "- (all had events)",
                "seconds": f"{run['events_s']:.1f}",
                "dense steps": f"{run['events_s'] / step:.1f}" if step > 0 else "-",
                "validation passes": f"{passes:.1f}",
                "peak RSS vs dense (model sizes)": f"{(run['peak_rss_mb'] - dense['peak_rss_mb']) / model_mb:+.2f}",
                "GPU peak vs dense (model sizes)": (
                    f"{(run['cuda_peak_mb'] - dense['cuda_peak_mb']) / model_mb:+.2f}" if run["cuda_peak_mb"] else "-"
                ),
                "held after fit (callbacks alone)": f"{held / 2**20:.2f} MB ({held / (model_mb * 2**20):.2%})",
                "artifact (bytes)": f"{run['artifact_bytes']:,}",
            }
        )
        for event, figures in sorted(run["events"].items(), key=lambda kv: -kv[1]["seconds"]):
            peak = figures.get("peak_rss_mb")
            table.append(
                {
                    **common,
                    "event": f"{event} x{figures['count']}",
                    "step (s)": "",
                    "seconds": f"{figures['seconds']:.1f}",
                    "dense steps": f"{figures['seconds'] / step:.1f}" if step > 0 else "-",
                    "validation passes": f"{figures.get('scored_samples', 0) / max(run.get('val_images', 1), 1):.1f}",
                    "peak RSS vs dense (model sizes)": (
                        f"{(peak - dense['peak_rss_mb']) / model_mb:+.2f}" if peak is not None else "-"
                    ),
                    "GPU peak vs dense (model sizes)": "",
                    "held after fit (callbacks alone)": "",
                    "artifact (bytes)": "",
                }
            )
    return table


def slopes(runs: list[dict[str, Any]], first: str = "resnet18", last: str = "vit_b_16") -> dict[str, float]:
    """Log-log slope of event time vs parameters from ``first`` to ``last``, per configuration."""
    out = {}
    for config in {r["config"] for r in runs} - {"dense"}:
        a = next((r for r in runs if r["net"] == first and r["config"] == config), None)
        b = next((r for r in runs if r["net"] == last and r["config"] == config), None)
        if a and b and a["events_s"] > 0 and b["events_s"] > 0:
            out[config] = math.log(b["events_s"] / a["events_s"]) / math.log(b["params"] / a["params"])
    return out


def plot(runs: list[dict[str, Any]], name: str) -> None:
    """Event time against parameters, log-log, one line per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for config in sorted({r["config"] for r in runs} - {"dense"}):
        rows = sorted((r for r in runs if r["config"] == config and r["events_s"] > 0), key=lambda r: r["params"])
        if rows:
            ax.plot([r["params"] for r in rows], [r["events_s"] for r in rows], "o-", label=config)
    dense = sorted((r for r in runs if r["config"] == "dense"), key=lambda r: r["params"])
    ax.plot([r["params"] for r in dense], [100 * r["step_s"] for r in dense], "k--", label="100 dense steps")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("compression events per fit (s)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--nets", nargs="+", default=["lenet300", "resnet18", "resnet50", "vit_b_16"], choices=sorted(NETS)
    )
    parser.add_argument("--configs", nargs="*", default=None, help="a subset of the configurations (dense always)")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--settings", nargs="+", default=["b32", "b16"], choices=list(SETTINGS))
    parser.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)  # a child's; a setting's otherwise
    parser.add_argument("--batch-for", nargs="*", default=[], help="per-net batch, e.g. vit_b_16=8")
    parser.add_argument("--val-images", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--classes", type=int, default=1000, help=argparse.SUPPRESS)
    parser.add_argument("--label-classes", type=int, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--val-for", nargs="*", default=[], help="per-net validation images, e.g. vit_b_16=16")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--defer-at-chance",
        action="store_true",
        help="keep the event guard's deferral of events on a model at chance (every model is, on random labels)",
    )
    parser.add_argument("--name", default=NAME)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--net", default="lenet300", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        result = run_one(
            args.net,
            args.child,
            args.steps,
            args.batch,
            args.val_images,
            args.device,
            args.classes,
            args.label_classes,
            judge_at_chance=not args.defer_at_chance,
        )
        print("RESULT " + json.dumps(result), flush=True)
        return
    runs: list[dict[str, Any]] = []
    for setting in args.settings:
        for net in args.nets:
            for config in [c for c in CONFIGS if args.configs is None or c == "dense" or c in args.configs]:
                row = _child(args, net, config, setting)
                row["setting"] = setting
                runs.append(row)
                print(
                    f"{setting} {net:9s} {config:40s} fit {row['fit_s']:7.1f}s events {row['events_s']:7.1f}s",
                    flush=True,
                )
                # every fit's figures kept as they come: a long run stopped part-way loses none of them
                (RESULTS / f"{args.name}.partial.json").write_text(json.dumps({"args": vars(args), "runs": runs}))
    table = summarise(runs)
    first = [r for r in runs if r["setting"] == args.settings[0]]  # one setting for the growth with size
    fitted = slopes(first)
    plot(first, args.name)
    described = "; ".join(
        f"{k}: batch {v['batch']}, {v['val_images']} validation images, {v['classes']}-class head, labels from "
        f"{v['label_classes']} classes"
        for k, v in SETTINGS.items()
        if k in args.settings
    )
    notes = (
        f"`python -m bench.scale {' '.join(sys.argv[1:])}`: synthetic data of each net's input size, SGD momentum "
        f"0.9, {args.steps} steps, each fit in its own process. Settings: {described}. "
        + (
            "The event guard's deferral at chance kept (events on these random labels deferred). "
            if args.defer_at_chance
            else "On these random labels every model is at chance: the event guard judges its events anyway (the "
            "library defers them; here their cost is measured, not their accuracy). "
        )
        + "For each configuration a "
        "row '(all)' and one per compression event (stages, rounds, search, BatchNorm re-estimation): its seconds, "
        "those in dense steps (the dense fit's median step, same setting), the passes over the validation images "
        "the callbacks' scorers ran (the event guard, WeightSharing's search) and the process's peak RSS during the "
        "event (the fit's, on the '(all)' row) against the dense fit's peak, in fp32 model sizes. Log-log slope of "
        "event time vs parameters, ResNet-18 to ViT-B/16: "
        + (", ".join(f"{k} {v:.2f}" for k, v in sorted(fitted.items())) or "-")
        + "."
    )
    print(write_results(args.name, {"args": vars(args), "runs": runs, "slopes": fitted}, table, notes).read_text())
    (RESULTS / f"{args.name}.partial.json").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
