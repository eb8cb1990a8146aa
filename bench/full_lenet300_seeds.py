"""The flagship recipe ``full_lenet300_fmnist`` again, per seed, against the committed dense runs of the same seed.

Re-measures the composed LeNet-300-100 recipe after a change (here: the optimizer state carried over
NeuronElimination's mid-fit shrink, the file following from the weights) without re-running the whole
``bench.composed_fmnist``: each seed's drop is against the best dense run of that seed stored in
``bench/results/composed_fmnist.json`` (same recipe, same data split, same seeds).

    python -m bench.full_lenet300_seeds --seeds 0 1 2
    python -m bench.full_lenet300_seeds --recipe rate_lenet300_fmnist --name rate_lenet300_seeds

(``--recipe`` runs another LeNet-300-100 recipe the same way, ``--overrides`` adds Hydra overrides, e.g.
``distill=true distillation.start=0.2``, and ``--name`` keeps its results file apart.)
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import torch

from bench.common import RESULTS, mean_std, quiet_run, write_results
from bench.composed_fmnist import run_recipe

RECIPE = "full_lenet300_fmnist"


def seed_runs(name: str) -> list[dict[str, Any]] | None:
    """The per-seed runs of this script's results file ``name`` (``None`` when it has not been written)."""
    path = RESULTS / f"{name}.json"
    return list(json.loads(path.read_text())["runs"]) if path.is_file() else None


def dense_per_seed(extra: Sequence[str] = ()) -> dict[int, float]:
    """The best dense run of each seed: ``composed_fmnist``'s, and the runs of the results files named in ``extra``
    (this script's own files of ``--recipe dense_lenet300_fmnist`` runs, for seeds ``composed_fmnist`` has not run)."""
    runs = json.loads((RESULTS / "composed_fmnist.json").read_text())["runs"]
    best = {
        int(run["seed"]): max(v["acc"] for k, v in run.items() if k.startswith("lenet300/dense@"))
        for run in runs
        if any(k.startswith("lenet300/dense@") for k in run)
    }
    for name in extra:
        for run in json.loads((RESULTS / f"{name}.json").read_text())["runs"]:
            best[int(run["seed"])] = max(best.get(int(run["seed"]), 0.0), float(run["acc"]))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's own")
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument("--name", default="full_lenet300_seeds")
    parser.add_argument("--overrides", nargs="*", default=[])
    parser.add_argument(
        "--dense-name", nargs="*", default=[], help="results files of dense runs for seeds composed_fmnist lacks"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    dense = dense_per_seed(args.dense_name)
    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        row = {"seed": seed, **run_recipe(args.recipe, [*quiet_run(seed, args.epochs), *args.overrides])}
        row["dense_acc"] = dense.get(seed)
        row["drop_pt"] = None if row["dense_acc"] is None else 100 * (row["dense_acc"] - row["acc"])
        runs.append(row)
        print(row, flush=True)
    table = [
        {
            "seed": r["seed"],
            "test acc (%)": f"{100 * r['acc']:.2f}",
            "dense (%)": "" if r["dense_acc"] is None else f"{100 * r['dense_acc']:.2f}",
            "drop (pt)": "" if r["drop_pt"] is None else f"{r['drop_pt']:.2f}",
            "bytes": f"{r['bytes']:,.0f}",
            "ratio": f"{r['ratio']:.1f}x",
            "fit (s)": f"{r['wall_s']:.0f}",
        }
        for r in runs
    ]
    drops = [r["drop_pt"] for r in runs if r["drop_pt"] is not None]
    ratios = [r["ratio"] for r in runs]
    notes = (
        f"`{args.recipe}` {' '.join(args.overrides)} on real Fashion-MNIST, seeds {args.seeds}, "
        f"{args.epochs or 'the recipe' + chr(39) + 's'} epochs; accuracy of the model "
        "reloaded from its artifact; drop against the best dense run of the same seed in "
        f"bench/results/composed_fmnist.json{''.join(f', {n}.json' for n in args.dense_name)}. "
        + (
            f"Mean: {mean_std(ratios)[0]:.1f}x at {mean_std(drops)[0]:.2f} ± {mean_std(drops)[1]:.2f} pt; worst seed "
            f"{max(drops):.2f} pt."
            if drops
            else f"Mean: {mean_std(ratios)[0]:.1f}x; no dense reference for these seeds."
        )
    )
    payload = {"recipe": args.recipe, "overrides": args.overrides, "seeds": args.seeds, "runs": runs}
    print(write_results(args.name, payload, table, notes).read_text())


if __name__ == "__main__":
    main()
