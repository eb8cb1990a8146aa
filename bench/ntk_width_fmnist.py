"""How NTK-LC's accuracy gap depends on width, on real Fashion-MNIST (recipe ``ntk_mlp_fmnist``).

The paper's claim is asymptotic: as the width grows, the conjugate kernel of the compressed net (sparse ternary
weights, moment-matched step activations) approaches the dense random-feature net's. A trained head sees a finite
number of features, so at finite width the gap shrinks but does not vanish. This benchmark measures it: for each
width ``w`` (hidden widths ``w, w, w/2``, the recipe's shape) it trains, with the same seed and epochs,

- the dense random-feature MLP (Gaussian weights, ReLU, head trained),
- NTK-LC as in the paper (97% sparse ternary weights, two-level steps, three-level last layer),
- NTK-LC with our learnable staircase (``ntk_activations=staircase``, ``ntk_learnable_activations=true``),

and fits ``gap = c * w^slope`` to each compressed variant's gaps (least squares in log-log). A slope near -0.5 is
the ``1/sqrt(width)`` rate of a Monte Carlo estimate of the kernel; the width at which the fitted gap reaches 1 point
is extrapolated, not measured.

Run: ``python -m bench.ntk_width_fmnist [--widths 500 1000 2000 4000] [--seeds 0] [--epochs 10]
[--variants dense steps staircase] [--activation-lr-scales 1.0] [--name ntk_width_fmnist]`` (``--name`` keeps a
partial rerun, e.g. more seeds at one width, from overwriting the sweep's results; ``--activation-lr-scales``
trains the staircase once per ``Ternarization(activation_lr_scale=...)`` value). ``--pool NAME [NAME ...]`` trains
nothing: it pools earlier results files by seed into one table (``--name`` names it).
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import numpy as np

from bench.common import RESULTS, mean_std, write_results
from bench.ternary_fmnist import DENSE_RF_OVERRIDES, LEARNABLE_STAIRCASE_OVERRIDES, run_one

NAME = "ntk_width_fmnist"
RECIPE = "ntk_mlp_fmnist"
DENSE = "dense RF-MLP (Gaussian, ReLU)"
#: command-line key -> (row label, overrides of the recipe)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "dense": (DENSE, DENSE_RF_OVERRIDES),
    "steps": ("NTK-LC, paper's steps", []),
    "staircase": ("NTK-LC, our staircase, learnable", LEARNABLE_STAIRCASE_OVERRIDES),
}


def widths_of(width: int) -> list[int]:
    """The recipe's shape ``2000-2000-1000`` scaled to ``width``."""
    return [width, width, width // 2]


def power_fit(widths: list[int], gaps: list[float]) -> tuple[float, float] | None:
    """``(c, slope)`` of ``gap = c * width^slope`` (None unless every gap is positive and there are two widths)."""
    if len(widths) < 2 or any(g <= 0 for g in gaps):
        return None
    slope, intercept = np.polyfit(np.log(widths), np.log(gaps), 1)
    return float(math.exp(intercept)), float(slope)


#: label -> width -> seed -> the run's metrics
Runs = dict[str, dict[int, dict[int, dict[str, Any]]]]


def pooled_runs(names: list[str]) -> tuple[Runs, int]:
    """The runs of earlier results files, keyed by seed (a later file wins a repeated seed), and their epochs."""
    runs: Runs = {}
    epochs: set[int] = set()
    for name in names:
        path = RESULTS / f"{name}.json"
        if not path.is_file():
            raise SystemExit(f"--pool: no results file {path}; run the benchmark with --name {name} first.")
        payload = json.loads(path.read_text())
        seeds = payload["seeds"] if "seeds" in payload else [payload["seed"]]  # the first version ran one seed
        seeds_of = payload.get("seeds_of_runs", {})  # a pooled file records each row's seed
        epochs.add(int(payload["epochs"]))
        for label, by_width in payload["runs"].items():
            for width, rows in by_width.items():
                rows = [rows] if isinstance(rows, dict) else rows  # the first version stored one run per width
                row_seeds = seeds_of.get(label, {}).get(width, seeds)
                runs.setdefault(label, {}).setdefault(int(width), {}).update(zip(row_seeds, rows, strict=True))
    if len(epochs) != 1:
        raise SystemExit(f"--pool: the files were trained for different epochs {sorted(epochs)}; pool like with like.")
    return runs, epochs.pop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--widths", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--activation-lr-scales", type=float, nargs="+", default=[1.0])
    parser.add_argument("--pool", nargs="+", metavar="NAME", help="train nothing: pool these results files by seed")
    parser.add_argument("--name", default=NAME, help="results file stem")
    args = parser.parse_args()
    if "dense" not in args.variants:
        parser.error("--variants must include dense (the gaps are taken against it)")

    if args.pool:
        runs, args.epochs = pooled_runs(args.pool)
        args.widths = sorted({w for by_width in runs.values() for w in by_width})
        args.seeds = sorted({seed for by_width in runs.values() for rows in by_width.values() for seed in rows})
    else:
        runs = train_runs(args)

    def gaps(label: str, width: int) -> list[float]:
        """Per-seed gap to the dense net of the same seed, in points (seeds without a dense run are left out)."""
        dense = runs[DENSE].get(width, {})
        rows = runs[label].get(width, {})
        return [100 * (dense[seed]["test/acc"] - row["test/acc"]) for seed, row in rows.items() if seed in dense]

    table: list[dict[str, Any]] = []
    for width in args.widths:
        for label, by_width in runs.items():
            if width not in by_width:
                continue
            rows = by_width[width]
            acc, acc_sd = mean_std([100 * r["test/acc"] for r in rows.values()])
            width_gaps = gaps(label, width)
            gap, gap_sd = mean_std(width_gaps) if width_gaps else (math.nan, math.nan)
            table.append(
                {
                    "widths": "-".join(map(str, widths_of(width))),
                    "model": label,
                    "seeds": ", ".join(map(str, rows)),
                    "test acc (%)": f"{acc:.2f} ± {acc_sd:.2f}",
                    "gap to dense (pt)": "-"
                    if label == DENSE
                    else f"{gap:.2f} ± {gap_sd:.2f} ({', '.join(f'{g:.2f}' for g in width_gaps)})",
                    "artifact bytes": f"{int(next(iter(rows.values()))['size/artifact_bytes']):,}",
                    "ratio vs fp32": f"{next(iter(rows.values()))['size/ratio']:.1f}x",
                }
            )
    fits: dict[str, dict[str, float]] = {}
    for label, by_width in runs.items():
        widths = [w for w in sorted(by_width) if label != DENSE and gaps(label, w)]
        fit = power_fit(widths, [mean_std(gaps(label, w))[0] for w in widths])
        if fit is not None:
            c, slope = fit
            one_point = (1.0 / c) ** (1.0 / slope) if slope < 0 else math.inf
            fits[label] = {"c": c, "slope": slope, "width_for_1pt": one_point}
    notes = (
        ("Pooled from " + ", ".join(f"results/{n}.json" for n in args.pool) + ". " if args.pool else "")
        + f"Seeds {', '.join(map(str, args.seeds))} (mean ± sd; gaps per seed against the dense net of the same "
        f"seed), {args.epochs} epochs (Adam 1e-2, cosine, head and learnable activations only), "
        "hidden widths w-w-w/2, 97% sparse ternary weights. Ratio: fp32 bytes of the same model / artifact file "
        "bytes. Fitted gap = c * w^slope: "
        + (
            "; ".join(
                f"{label}: slope {f['slope']:.2f}, 1-point width (extrapolated) {f['width_for_1pt']:,.0f}"
                for label, f in fits.items()
            )
            or "none (it needs two widths)"
        )
    )
    payload = {
        "runs": {k: {str(w): list(r.values()) for w, r in v.items()} for k, v in runs.items()},
        "seeds_of_runs": {k: {str(w): list(r) for w, r in v.items()} for k, v in runs.items()},
        "fits": fits,
        **vars(args),
    }
    print(write_results(args.name, payload, table, notes).read_text())


def train_runs(args: argparse.Namespace) -> Runs:
    """Train every selected variant at every width and seed."""
    selected: list[tuple[str, list[str]]] = []
    for key in args.variants:
        label, extra = VARIANTS[key]
        if key != "staircase" or args.activation_lr_scales == [1.0]:
            selected.append((label, extra))
            continue
        for scale in args.activation_lr_scales:
            override = f"compress.ternarization.activation_lr_scale={scale}"
            selected.append((f"{label}, activation lr x{scale:g}", [*extra, override]))
    runs: Runs = {label: {} for label, _ in selected}
    for width in args.widths:
        shape = ",".join(map(str, widths_of(width)))
        for label, extra in selected:
            runs[label][width] = {
                seed: run_one(RECIPE, seed, args.epochs, [f"model.widths=[{shape}]", *extra]) for seed in args.seeds
            }
    return runs


if __name__ == "__main__":
    main()
