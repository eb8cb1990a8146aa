"""The event guard's own cost on LeNet-300-100 in the flagship's setting: seconds and passes against the dense fit.

The flagship recipe ``full_lenet300_fmnist`` (55,000 Fashion-MNIST images, 10 epochs, Adam 3e-3 held then cosine)
gives its callbacks targets, so no event guard runs in it; its own validation-set passes are WeightSharing's search.
Beside it, the same training (the dense recipe) with each guarded default added with no arguments,
``NeuronElimination()`` and ``SuccessivePruning()``: there the guard runs at every round or stage. The guard's time
is everything the event guard does, measured by wrapping its three parts (caching its samples, re-estimating the
BatchNorm statistics and scoring the cached samples for each model it judges, reading the training batches the
statistics are re-estimated on); a pass is one scoring of the cached samples. The share is against the dense fit's
wall time in the same process (issue #35's target: at most 10%).

    python -m bench.guard_cost --seeds 0
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch

import lightning_compress as lc
from bench.common import composed, mean_std, quiet_run, write_results
from lightning_compress.callbacks import event_guard
from lightning_compress.cli import train

DENSE = "dense_lenet300_fmnist"
FLAGSHIP = "full_lenet300_fmnist"
#: configuration -> (recipe, callback added to it with no arguments)
CONFIGS: dict[str, tuple[str, Callable[[], pl.Callback] | None]] = {
    "dense": (DENSE, None),
    "flagship (full_lenet300_fmnist)": (FLAGSHIP, None),
    "dense recipe + NeuronElimination()": (DENSE, lambda: lc.NeuronElimination(verbose=False)),
    "dense recipe + SuccessivePruning()": (DENSE, lambda: lc.SuccessivePruning()),
}


class GuardClock:
    """Seconds spent in the event guard's work and the passes it ran (wraps the functions it calls, this process)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.passes = 0
        guard = event_guard.EventGuard
        self._originals = (guard.prepare, guard.outcomes_after_norms, event_guard.event_norm_inputs)

    def _timed(self, function: Callable[..., Any], count: bool = False) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                if count:
                    self.passes += 1

        return wrapped

    def __enter__(self) -> GuardClock:
        prepare, outcomes, norm_inputs = self._originals
        event_guard.EventGuard.prepare = self._timed(prepare)  # type: ignore[method-assign]
        event_guard.EventGuard.outcomes_after_norms = self._timed(outcomes, count=True)  # type: ignore[method-assign]
        event_guard.event_norm_inputs = self._timed(norm_inputs)
        return self

    def __exit__(self, *exc: object) -> None:
        guard = event_guard.EventGuard
        guard.prepare, guard.outcomes_after_norms, event_guard.event_norm_inputs = self._originals  # type: ignore[method-assign]


def mean(rows: list[dict[str, Any]], key: str) -> float:
    return mean_std([r[key] for r in rows])[0]


def run(config: str, seed: int, epochs: int) -> dict[str, Any]:
    recipe, factory = CONFIGS[config]
    callback = None if factory is None else factory()
    with composed(recipe, quiet_run(seed, epochs)) as cfg, GuardClock() as clock:
        metrics, objects = train(cfg, extra_callbacks=[] if callback is None else [callback])
    # every compression callback of the fit: the recipe's own (the flagship's) and the one added
    events = [s for cb in objects["trainer"].callbacks for s in getattr(cb, "event_seconds", {}).values()]
    return {
        "config": config,
        "seed": seed,
        "fit_s": metrics["fit/wall_s"],
        "guard_s": clock.seconds,
        "passes": clock.passes,
        "events_s": sum(events),
        "acc": metrics.get("test/acc_artifact", metrics.get("test/acc")),
        "ratio": metrics.get("size/ratio"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--name", default="guard_cost")
    args = parser.parse_args()
    torch.set_num_threads(2)
    runs = []
    for seed in args.seeds:
        for config in args.configs:
            runs.append(run(config, seed, args.epochs))
            print(runs[-1], flush=True)
    table = []
    for config in args.configs:
        rows = [r for r in runs if r["config"] == config]
        dense = {r["seed"]: r["fit_s"] for r in runs if r["config"] == "dense"}
        shares = [100 * r["guard_s"] / dense[r["seed"]] for r in rows if r["seed"] in dense]
        table.append(
            {
                "configuration": config,
                "fit (s)": f"{mean(rows, 'fit_s'):.1f}",
                "events (s)": f"{mean(rows, 'events_s'):.1f}",
                "guard (s)": f"{mean(rows, 'guard_s'):.2f}",
                "guard passes": f"{mean(rows, 'passes'):.1f}",
                "guard / dense fit": f"{max(shares):.1f}%" if shares else "",
                "test acc (%)": f"{100 * mean(rows, 'acc'):.2f}",
                "ratio": f"{mean(rows, 'ratio'):.1f}x",
            }
        )
    notes = (
        f"LeNet-300-100 on real Fashion-MNIST (55,000 training images), {args.epochs} epochs, seeds {args.seeds}, the "
        "flagship's training (Adam 3e-3, held then cosine). Guard: the seconds of the event guard's work (caching its "
        "validation samples, re-estimating BatchNorm statistics where there are any, scoring each judged model, "
        "reading the batches the statistics use); passes: scorings of its cached samples; the share is the largest "
        "over the seeds, against the dense fit of the same seed in the same process."
    )
    payload = {"seeds": args.seeds, "epochs": args.epochs, "runs": runs}
    print(write_results(args.name, payload, table, notes).read_text())


if __name__ == "__main__":
    main()
