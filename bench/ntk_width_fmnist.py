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
trains the staircase once per ``Ternarization(activation_lr_scale=...)`` value).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np

from bench.common import mean_std, write_results
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--widths", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--activation-lr-scales", type=float, nargs="+", default=[1.0])
    parser.add_argument("--name", default=NAME, help="results file stem")
    args = parser.parse_args()
    if "dense" not in args.variants:
        parser.error("--variants must include dense (the gaps are taken against it)")

    selected: list[tuple[str, list[str]]] = []
    for key in args.variants:
        label, extra = VARIANTS[key]
        if key != "staircase" or args.activation_lr_scales == [1.0]:
            selected.append((label, extra))
            continue
        for scale in args.activation_lr_scales:
            override = f"compress.ternarization.activation_lr_scale={scale}"
            selected.append((f"{label}, activation lr x{scale:g}", [*extra, override]))
    labels = [label for label, _ in selected]
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {label: {} for label in labels}
    for width in args.widths:
        shape = ",".join(map(str, widths_of(width)))
        for label, extra in selected:
            runs[label][width] = [
                run_one(RECIPE, seed, args.epochs, [f"model.widths=[{shape}]", *extra]) for seed in args.seeds
            ]

    def gaps(label: str, width: int) -> list[float]:
        """Per-seed gap to the dense net of the same seed, in points."""
        pairs = zip(runs[DENSE][width], runs[label][width], strict=True)
        return [100 * (dense["test/acc"] - row["test/acc"]) for dense, row in pairs]

    table: list[dict[str, Any]] = []
    for width in args.widths:
        for label in labels:
            rows = runs[label][width]
            acc, acc_sd = mean_std([100 * r["test/acc"] for r in rows])
            gap, gap_sd = mean_std(gaps(label, width))
            table.append(
                {
                    "widths": "-".join(map(str, widths_of(width))),
                    "model": label,
                    "test acc (%)": f"{acc:.2f} ± {acc_sd:.2f}",
                    "gap to dense (pt)": "-" if label == DENSE else f"{gap:.2f} ± {gap_sd:.2f}",
                    "artifact bytes": f"{int(rows[0]['size/artifact_bytes']):,}",
                    "ratio vs fp32": f"{rows[0]['size/ratio']:.1f}x",
                }
            )
    fits: dict[str, dict[str, float]] = {}
    for label in labels:
        if label == DENSE:
            continue
        fit = power_fit(args.widths, [mean_std(gaps(label, w))[0] for w in args.widths])
        if fit is not None:
            c, slope = fit
            one_point = (1.0 / c) ** (1.0 / slope) if slope < 0 else math.inf
            fits[label] = {"c": c, "slope": slope, "width_for_1pt": one_point}
    notes = (
        f"Seeds {', '.join(map(str, args.seeds))} (mean ± sd; gaps per seed), {args.epochs} epochs (Adam 1e-2, "
        "cosine, head and learnable activations only), "
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
    payload = {"runs": {k: {str(w): r for w, r in v.items()} for k, v in runs.items()}, "fits": fits, **vars(args)}
    print(write_results(args.name, payload, table, notes).read_text())


if __name__ == "__main__":
    main()
