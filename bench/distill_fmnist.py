"""Distillation measured: LeNet-300-100 recipes without it, with the model before compression as the teacher, and
with a dense network of the same seed as the teacher, 3 seeds each, against the dense runs of the same seeds.

The runs are ``bench.full_lenet300_seeds``'s (one results file per row below); this script tabulates them::

    python -m bench.full_lenet300_seeds --recipe rate_lenet300_fmnist --name rate_lenet300_seeds
    python -m bench.full_lenet300_seeds --recipe rate_lenet300_fmnist --name rate_lenet300_distill_seeds \\
        --overrides distill=true distillation.start=0.2
    lcompress recipe=dense_lenet300_fmnist seed=S hydra.run.dir=/tmp/teachers/sS     # S = 0, 1, 2
    python -m bench.full_lenet300_seeds --recipe rate_lenet300_fmnist --name rate_lenet300_distill_dense_seeds \\
        --overrides distill=true 'distillation.teacher=/tmp/teachers/s${seed}/model.lcz'
    (the same for full_lenet300_fmnist and surp_lenet300_fmnist)
    python -m bench.distill_fmnist
"""

from __future__ import annotations

from typing import Any

from bench.common import mean_sd_text, mean_std, write_results
from bench.full_lenet300_seeds import seed_runs

NAME = "distill_fmnist"
ROWS = (
    ("rate_lenet300_fmnist", "none", "rate_lenet300_ws_unbounded_seeds"),
    ("rate_lenet300_fmnist", "the model at 20% of the fit", "rate_lenet300_distill_seeds"),
    ("rate_lenet300_fmnist", "a dense net (same seed)", "rate_lenet300_distill_dense_seeds"),
    ("rate_lenet300_fmnist", "a dense net (same seed), T = 2, weight 0.5", "rate_lenet300_distill_dense_t2_seeds"),
    ("full_lenet300_fmnist", "none", "full_lenet300_ws_unbounded_seeds"),
    ("full_lenet300_fmnist", "the model at 20% of the fit", "full_lenet300_distill_seeds"),
    ("full_lenet300_fmnist", "a dense net (same seed)", "full_lenet300_distill_dense_seeds"),
    ("surp_lenet300_fmnist", "none", "surp_lenet300_seeds"),
    ("surp_lenet300_fmnist", "a dense net (same seed)", "surp_lenet300_distill_dense_seeds"),
)


def row(recipe: str, teacher: str, source: str) -> dict[str, Any] | None:
    runs = seed_runs(source)
    if runs is None:
        return None
    drops = [r["drop_pt"] for r in runs]
    return {
        "recipe": recipe,
        "teacher": teacher,
        "seeds": len(runs),
        "drop (pt)": mean_sd_text(drops),
        "worst seed (pt)": f"{max(drops):.2f}",
        "ratio": f"{mean_std([r['ratio'] for r in runs])[0]:.1f}x",
        "bytes": f"{mean_std([r['bytes'] for r in runs])[0]:,.0f}",
        "fit (s)": f"{mean_std([r['wall_s'] for r in runs])[0]:.0f}",
        "results": source,
    }


def main() -> None:
    table = [r for r in (row(*spec) for spec in ROWS) if r is not None]
    notes = (
        "LeNet-300-100 on real Fashion-MNIST, 10 epochs, seeds 0-2; drop against the best dense run of the same seed "
        "(bench/results/composed_fmnist.json); accuracy of the model reloaded from its artifact. Distillation: "
        "T = 4, weight 1 (KL term added to the cross-entropy). Teachers: the model at 20% of the fit (before the "
        "support method's first event; NeuronElimination's rounds, near-lossless, come before it) or the dense "
        "recipe's artifact of the same seed (its own 10-epoch fit is not counted in the fit time). Fit times ran "
        "beside other jobs on the 2 cores: compare them within a row group only roughly. All these runs predate "
        "WeightSharing's search_budget (its search unbounded); the rows without distillation are kept as "
        "*_ws_unbounded_seeds for that reason."
    )
    print(write_results(NAME, {"rows": [list(r) for r in ROWS]}, table, notes).read_text())


if __name__ == "__main__":
    main()
