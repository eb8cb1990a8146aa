"""WeightSharing's search, before and after screening, next to an exhaustive sweep, on LeNet-300-100 / Fashion-MNIST.

Per seed, a 784-300-100-10 MLP is trained dense (Adam 1e-3, the fast in-memory loop of ``bench.overhead``), then
one codebook is chosen for all its parameters by three searches, all with the callback's defaults
(``accuracy_budget`` 0.005, 3 merge candidates) and the same 5,000 held-out validation images:

* **full**: NSGA-II (population 32, 20 generations, k in [2, 1024]) scoring every candidate on all 5,000 images
  (``WeightSharing(screen_samples=None)``, the search before this change);
* **screened**: ``WeightSharing()``'s defaults now: the same NSGA-II scoring candidates on the first 1,000 images,
  on k in [2, 64] only when 64 bins are already within the budget (``k_focus``), confirming the front near the
  budget on all 5,000 images, merging on the 1,000 and keeping the longest merge prefix within the budget on all
  5,000;
* **exhaustive**: every k in [2, 64] on all 5,000 images, then the same confirmation, merges and choice rule;
* **budgeted**: the screened search under ``WeightSharing()``'s default ``search_budget`` of 20 passes over the
  5,000 images (``--budgeted-only`` runs it and the unbounded screened one alone, with ``--name``).

Reported: the chosen point (k, shared values, merged or not) and its validation accuracy on all 5,000 images, the
search's wall time and evaluations, and the hypervolume of its front of (validation error, shared values) for
solutions with at most 64 shared values (reference point: error 1, 65 values), each front's points scored on all
5,000 images (the screened front is re-scored after the search, outside its timing), relative to the exhaustive one.

Run: ``python -m bench.ws_search [--seeds 0 1 2] [--epochs 10] [--arch mlp|cnn]``; results in
``bench/results/ws_search.{json,md}``. Every row also says the passes over the 5,000 images the search spent.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn

from bench.common import quiet_trainer, write_results
from bench.defaults_fmnist import UserClassifier, cnn, fmnist_tensors, mlp
from bench.overhead import _loader
from lightning_compress.functional.weight_sharing import (
    SearchBudget,
    SearchPoint,
    WeightSharingProblem,
    choose_codebook,
    nsga2_search,
    pareto_front,
)

NAME = "ws_search"
BUDGET = 0.005
SCREEN = 1000
SEARCH_BUDGET = 20.0  # WeightSharing()'s default


def train_dense(seed: int, epochs: int, splits: dict[str, Any], arch: str = "mlp") -> nn.Module:
    pl.seed_everything(seed, verbose=False)
    model = UserClassifier(mlp() if arch == "mlp" else cnn())
    trainer = quiet_trainer(epochs)
    trainer.fit(model, _loader(splits["train"], 128, True, seed))
    return model.net.eval()


def error_fn(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], float]:
    @torch.no_grad()
    def error() -> float:
        logits = torch.cat([net(xb) for xb in x.split(1000)])
        return 1.0 - float((logits.argmax(1) == y).float().mean())

    return error


def hypervolume(points: list[SearchPoint]) -> float:
    from pymoo.indicators.hv import HV

    front = [p for p in pareto_front(points) if p.num_shared <= 64]
    values = np.array([[p.error, p.num_shared] for p in front], dtype=float)
    return float(HV(ref_point=np.array([1.0, 65.0]))(values)) if len(values) else 0.0


def run_search(net: nn.Module, method: str, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    net = copy.deepcopy(net)
    full = error_fn(net, x, y)
    screened = method in ("screened", "budgeted")
    screen = error_fn(net, x[:SCREEN], y[:SCREEN]) if screened else None
    budget = SearchBudget(SEARCH_BUDGET, screen_cost=SCREEN / len(y)) if method == "budgeted" else None
    problem = WeightSharingProblem(list(net.parameters()), full, screen_fn=screen, budget=budget)
    if method == "exhaustive":

        def explore(evaluate: Callable[[int], SearchPoint], k_max: int | None) -> None:
            for k in range(2, 65):
                evaluate(k)

    else:

        def explore(evaluate: Callable[[int], SearchPoint], k_max: int | None) -> None:
            nsga2_search(evaluate, (2, min(1024, k_max or 1024)), pop_size=32, n_gen=20, seed=1)

    started = time.perf_counter()
    focus = 64 if screened else None  # the callback's defaults now; "full" is the search before #18
    choice = choose_codebook(problem, explore, accuracy_budget=BUDGET, merge_candidates=3, focus_k=focus)
    seconds = time.perf_counter() - started
    evaluations, full_evaluations = problem.evaluations, problem.full_evaluations
    # passes over all the images: every full score one, every screened one its share, the unshared baselines too
    passes = full_evaluations + 1 + (evaluations - full_evaluations + 1) * (SCREEN / len(y)) * screened
    # the front scored on all the data (for the screened search: re-scored here, outside the timing and the budget)
    problem.budget = None
    front = pareto_front(choice.screened)
    scored = [SearchPoint(p.k, p.num_shared, problem.confirm(p.k)) for p in front] if screen else front
    problem.restore()
    return {
        "method": method,
        "k": choice.chosen.k,
        "num_shared": choice.chosen.num_shared,
        "merged": choice.chosen.merged,
        "val_acc": 1.0 - choice.chosen.error,
        "baseline_val_acc": 1.0 - choice.baseline_error,
        "search_s": seconds,
        "evaluations": evaluations,
        "full_evaluations": full_evaluations,
        "hypervolume": hypervolume(scored),
        "passes": passes,
        "budget_ended": choice.search_ended,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--arch", choices=["mlp", "cnn"], default="mlp")
    parser.add_argument("--budgeted-only", action="store_true", help="the screened search, unbounded and budgeted")
    parser.add_argument("--name", default=NAME)
    args = parser.parse_args()
    splits = fmnist_tensors()
    x, y = splits["val"].tensors
    runs = []
    methods = ("screened", "budgeted") if args.budgeted_only else ("full", "screened", "exhaustive", "budgeted")
    for seed in args.seeds:
        net = train_dense(seed, args.epochs, splits, args.arch)
        for method in methods:
            row = {"seed": seed, **run_search(net, method, x, y)}
            runs.append(row)
            print(row, flush=True)
    table = []
    reference = "exhaustive" if not args.budgeted_only else "screened"
    for method in methods:
        rows = [r for r in runs if r["method"] == method]
        exhaustive = {r["seed"]: r["hypervolume"] for r in runs if r["method"] == reference}
        table.append(
            {
                "search": method,
                "chosen k / shared values (per seed)": ", ".join(
                    f"{r['k']}/{r['num_shared']}{'m' if r['merged'] else ''}" for r in rows
                ),
                "val acc (%)": ", ".join(f"{100 * r['val_acc']:.2f}" for r in rows),
                "unshared (%)": ", ".join(f"{100 * r['baseline_val_acc']:.2f}" for r in rows),
                "search (s), median": f"{statistics.median(r['search_s'] for r in rows):.2f}",
                "evaluations (all data)": ", ".join(f"{r['evaluations']} ({r['full_evaluations']})" for r in rows),
                f"hypervolume vs {reference}": ", ".join(
                    f"{r['hypervolume'] / exhaustive[r['seed']]:.4f}" for r in rows
                ),
                "passes over the 5,000 images": ", ".join(f"{r['passes']:.1f}" for r in rows),
            }
        )
    notes = (
        f"`python -m bench.ws_search --seeds {' '.join(map(str, args.seeds))} --epochs {args.epochs} --arch "
        f"{args.arch}{' --budgeted-only' if args.budgeted_only else ''}`: "
        f"{'LeNet-300-100' if args.arch == 'mlp' else 'a LeNet-5-style CNN'} trained dense per seed, then searches "
        "for one codebook on it (accuracy budget 0.5 pt, 5,000 validation images; screened: 1,000 of them for the "
        f"search; budgeted: the screened search within {SEARCH_BUDGET:g} passes). 'm': merged solution."
    )
    print(write_results(args.name, {"args": vars(args), "runs": runs}, table, notes).read_text())


if __name__ == "__main__":
    main()
