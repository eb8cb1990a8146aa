"""What the callbacks themselves cost: a fast in-memory training loop, each callback and each composed recipe.

A user's plain ``LightningModule`` (``bench.defaults_fmnist.UserClassifier``: 784-300-100-10 MLP, or LeNet-5 with
Caffe's sizes) trains with Adam on Fashion-MNIST tensors held in memory (55,000 train / 5,000 validation), batches
drawn by index from those tensors, so no data pipeline hides the callbacks' cost. Every configuration runs in its
own fresh process (the same for dense), the configurations interleaved and their order rotated each repeat; the
figures are medians over repeats.

For each configuration:

* ``fit`` wall time, and its ratio to the dense fit's (median over repeats);
* the breakdown of what it adds to the dense fit: **events** (the callbacks' compression events, timed by
  :func:`lightning_compress.callbacks.base.compression_event`: stages, rounds, the search, swaps, bakes),
  **hooks** (the rest of the compression callbacks' hook time, from Lightning's ``SimpleProfiler``: masks, holds,
  scheduling) and **in model** (the remainder: work inside forward and backward, e.g. fake quantisation);
* peak memory: the process's largest resident set during the fit (sampled every 20 ms; it includes Python, torch
  and the in-memory data set), its rise above the resident set just before the fit (the fit's own memory: model,
  gradients, optimizer state, activations, and the callbacks' work), and the bytes of tensors the callbacks still
  hold after the fit (masks, frozen values, snapshots);
* WeightSharing's search: wall time, evaluations, chosen number of shared values, validation accuracy.

Run: ``python -m bench.overhead [--epochs 10] [--repeats 3] [--nets mlp cnn] [--name overhead]``. The results go to
``bench/results/overhead.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.profilers import SimpleProfiler
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

import lightning_compress as lc
from bench.common import PeakRss, composed, held_bytes, mean_std, quiet_run, quiet_trainer, write_results
from bench.defaults_fmnist import UserClassifier, cnn, fmnist_tensors, mlp
from lightning_compress.callbacks.base import CompressionCallback
from lightning_compress.cli import instantiate_children

NAME = "overhead"
RECIPES = [
    "full_lenet300_fmnist",
    "eliminate_ternary_lenet300_fmnist",
    "eliminate_share_lenet300_fmnist",
    "surp_share_lenet300_fmnist",
]


def _recipe(name: str) -> Callable[[], list[pl.Callback]]:
    def build() -> list[pl.Callback]:
        with composed(name, quiet_run(0)) as cfg:
            callbacks = instantiate_children(cfg.get("compress"))
        for cb in callbacks:
            if hasattr(cb, "progress"):
                cb.progress = False
            if hasattr(cb, "verbose"):
                cb.verbose = False
        return callbacks

    return build


SINGLES: dict[str, Callable[[], list[pl.Callback]]] = {
    "dense": list,
    "NeuronElimination(target_params=0.1)": lambda: [lc.NeuronElimination(target_params=0.1, verbose=False)],
    "SuccessivePruning(0.95)": lambda: [lc.SuccessivePruning(0.95)],
    "Ternarization(mode='qat')": lambda: [lc.Ternarization(mode="qat")],
    "WeightSharing()": lambda: [lc.WeightSharing(progress=False)],
}
CONFIGS: dict[str, dict[str, Callable[[], list[pl.Callback]]]] = {
    "mlp": {**SINGLES, **{f"recipe {r}": _recipe(r) for r in RECIPES}},
    # LeNet-5 on 2 CPU cores is slow (4-5 minutes a fit): dense, the search the issue names, and QAT (whose
    # per-step cost is elementwise work that a conv net's arithmetic dwarfs)
    "cnn": {
        "dense": list,
        "WeightSharing()": SINGLES["WeightSharing()"],
        "Ternarization(mode='qat')": SINGLES["Ternarization(mode='qat')"],
    },
}
NETS = {"mlp": mlp, "cnn": cnn}
PER_STEP_HOOKS = (
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_train_batch_end",
)


def _loader(data: TensorDataset, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    """Batches indexed straight out of the tensors (one fancy index per batch, no per-sample collation)."""
    sampler = RandomSampler(data, generator=torch.Generator().manual_seed(seed)) if shuffle else SequentialSampler(data)
    return DataLoader(data, sampler=BatchSampler(sampler, batch_size, drop_last=False), batch_size=None)


def run_one(net: str, config: str, epochs: int, seed: int) -> dict[str, Any]:
    """One fit in this process; its figures."""
    pl.seed_everything(seed, verbose=False)
    splits = fmnist_tensors()
    model = UserClassifier(NETS[net]())
    callbacks = CONFIGS[net][config]()
    with tempfile.TemporaryDirectory() as tmp:
        profiler = SimpleProfiler(dirpath=tmp, filename="profile")
        trainer = quiet_trainer(epochs, callbacks, profiler=profiler, default_root_dir=tmp)
        train = _loader(splits["train"], 128, True, seed)
        val = _loader(splits["val"], 1000, False, seed)
        before = PeakRss.now()
        with PeakRss() as rss:
            started = time.perf_counter()
            trainer.fit(model, train, val)
            fit_s = time.perf_counter() - started
        compression = [cb for cb in callbacks if isinstance(cb, CompressionCallback)]
        names = tuple(cb.state_key for cb in compression)
        hooks = {
            action: sum(durations)
            for action, durations in profiler.recorded_durations.items()
            if action.startswith("[Callback]") and action[len("[Callback]") :].startswith(names or ("\0",))
        }
        artifact = lc.save(model, f"{tmp}/model.lcz")
        size = artifact.stat().st_size
    events: dict[str, float] = {}
    for cb in compression:
        for event, seconds in cb.event_seconds.items():
            events[f"{cb.owner}.{event}"] = events.get(f"{cb.owner}.{event}", 0.0) + seconds
    summary: dict[str, float] = {}
    for cb in compression:
        summary.update(cb.summary())
    return {
        "net": net,
        "config": config,
        "seed": seed,
        "fit_s": fit_s,
        "events_s": events,
        "hooks_s": sum(hooks.values()),
        "per_step_hooks_s": sum(v for k, v in hooks.items() if k.rsplit(".", 1)[-1] in PER_STEP_HOOKS),
        # a training step's hook time as a user sees it: per hook, the median call (a step that holds an event, a
        # stage or a round, is an outlier the median leaves out; events are counted in `events_s`)
        "hook_ms_per_step": 1e3
        * sum(
            statistics.median(durations)
            for action, durations in profiler.recorded_durations.items()
            if action.startswith("[Callback]")
            and action[len("[Callback]") :].startswith(names or ("\0",))
            and action.rsplit(".", 1)[-1] in PER_STEP_HOOKS
        ),
        # the holds put back from a hook on the optimizer, right after each step (not a Lightning hook)
        "optimizer_hook_ms_per_step": 1e3
        * sum(cb.step_hooks.seconds for cb in compression)
        / max(1, max((cb.step_hooks.calls for cb in compression), default=0)),
        "step_ms": 1e3 * statistics.median(profiler.recorded_durations.get("run_training_batch", [float("nan")])),
        "peak_rss_mb": (rss.peak - before) / 2**20,
        "peak_rss_total_mb": rss.peak / 2**20,
        "held_mb": sum(held_bytes(cb) for cb in compression) / 2**20,
        "val_acc": float(trainer.callback_metrics.get("val_acc", float("nan"))),
        "artifact_bytes": size,
        "steps": trainer.global_step,
        "weight_sharing": {k: v for k, v in summary.items() if k.startswith("weight_sharing/")},
    }


def _child(net: str, config: str, epochs: int, seed: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.overhead", "--child", config, "--net", net, "--epochs", str(epochs)]
    proc = subprocess.run([*cmd, "--seed", str(seed)], capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{net} {config} failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in rows)


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One table row per (net, configuration): medians over repeats, ratios to that net's dense fit."""
    table = []
    for net in dict.fromkeys(r["net"] for r in runs):
        dense = [r for r in runs if r["net"] == net and r["config"] == "dense"]
        dense_fit = _median(dense, "fit_s")
        dense_rss = _median(dense, "peak_rss_mb")
        dense_total = _median(dense, "peak_rss_total_mb")
        for config in dict.fromkeys(r["config"] for r in runs if r["net"] == net):
            rows = [r for r in runs if r["net"] == net and r["config"] == config]
            fit = _median(rows, "fit_s")
            events = statistics.median(sum(r["events_s"].values()) for r in rows)
            hooks = statistics.median(r["hooks_s"] - sum(r["events_s"].values()) for r in rows)
            search = [r["weight_sharing"].get("weight_sharing/search_s") for r in rows]
            ratios = [r["fit_s"] / d["fit_s"] for r, d in zip(rows, dense, strict=False)]
            table.append(
                {
                    "net": net,
                    "config": config,
                    "fit (s)": f"{fit:.2f}",
                    "vs dense": f"{fit / dense_fit:.3f}x",
                    "per repeat": " ".join(f"{x:.2f}" for x in ratios),
                    "events (s)": f"{events:.2f}",
                    "hooks (s)": f"{hooks:.2f}",
                    "in model (s)": f"{fit - dense_fit - events - hooks:.2f}",
                    "without events": f"{(fit - events) / dense_fit:.3f}x",
                    "step (ms)": f"{_median(rows, 'step_ms'):.2f}" if "step_ms" in rows[0] else "-",
                    "hooks per step (ms)": (
                        f"{_median(rows, 'hook_ms_per_step') + _median(rows, 'optimizer_hook_ms_per_step'):.3f}"
                        if "hook_ms_per_step" in rows[0]
                        else "-"
                    ),
                    "fit's RSS rise (MB)": f"{_median(rows, 'peak_rss_mb'):.0f}",
                    "rise vs dense": f"{(_median(rows, 'peak_rss_mb') - dense_rss) / max(dense_rss, 1e-9):+.0%}",
                    "peak RSS (MB)": f"{_median(rows, 'peak_rss_total_mb'):.0f}",
                    "vs dense peak": f"{(_median(rows, 'peak_rss_total_mb') - dense_total) / dense_total:+.1%}",
                    "held (MB)": f"{_median(rows, 'held_mb'):.2f}",
                    "WS search (s)": "-" if None in search else f"{statistics.median(search):.2f}",
                    "search / fit": "-" if None in search else f"{statistics.median(search) / fit:.1%}",
                    "val acc": f"{100 * mean_std([r['val_acc'] for r in rows])[0]:.2f}",
                }
            )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cnn-repeats", type=int, default=1)
    parser.add_argument("--nets", nargs="+", default=["mlp", "cnn"], choices=sorted(NETS))
    parser.add_argument("--configs", nargs="*", default=None, help="a subset of the configurations (dense always)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--net", default="mlp", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default=NAME, help="results file name (bench/results/NAME.{json,md})")
    args = parser.parse_args()
    if args.child is not None:
        print("RESULT " + json.dumps(run_one(args.net, args.child, args.epochs, args.seed)), flush=True)
        return
    runs: list[dict[str, Any]] = []
    for net in args.nets:
        configs = [c for c in CONFIGS[net] if args.configs is None or c == "dense" or c in args.configs]
        repeats = args.repeats if net == "mlp" else args.cnn_repeats
        for repeat in range(repeats):
            order = configs[repeat % len(configs) :] + configs[: repeat % len(configs)]  # rotate: no fixed slot
            for config in order:
                row = _child(net, config, args.epochs, args.seed)
                row["repeat"] = repeat
                runs.append(row)
                print(f"{net:4s} {config:45s} repeat {repeat}: fit {row['fit_s']:.2f}s", flush=True)
    table = summarise(runs)
    notes = (
        f"`python -m bench.overhead --epochs {args.epochs} --repeats {args.repeats} --cnn-repeats {args.cnn_repeats}"
        f" --nets {' '.join(args.nets)}"
        + (" --configs " + " ".join(f'"{c}"' for c in args.configs) if args.configs else "")
        + "`"
        ": each fit in its own process, configurations interleaved; medians over repeats. Fast in-memory loop "
        "(batches indexed from tensors). events = compression events; hooks = the rest of the callbacks' hook time "
        "(SimpleProfiler); in model = fit - dense - events - hooks (work inside forward/backward, and noise); step = "
        "the median training step (Lightning's `run_training_batch`, hooks included); hooks per step = the "
        "callbacks' per-step hooks, the median call of each, summed (steps holding an event left out), plus the "
        "mean time of the hook on the optimizer that puts masks and held values back after each step."
    )
    print(write_results(args.name, {"args": vars(args), "runs": runs}, table, notes).read_text())


if __name__ == "__main__":
    main()
