"""Which SuRP recipe settings matter: LR schedule and refinement after the target (LeNet-300-100, Fashion-MNIST).

Runs ``surp_lenet300_fmnist`` (98%, 10 epochs) with the cosine schedule or a constant LR, and ``refine_steps``
10 or 0; reports the artifact ratio and test accuracy. Run: ``python -m bench.surp_recipe_ablation [--seed 42]``.
"""

from __future__ import annotations

import argparse

from bench.common import composed, quiet_run, write_results
from lightning_compress.cli import train

NAME = "surp_recipe_ablation"
SETTINGS = {
    "cosine decay, refine_steps=10 (the first defaults)": [
        "scheduler=cosine",
        "compress.successive_pruning.refine_steps=10",
    ],
    "constant LR, refine_steps=10": ["scheduler=none", "compress.successive_pruning.refine_steps=10"],
    "constant LR, refine_steps=0 (the recipe now)": ["scheduler=none", "compress.successive_pruning.refine_steps=0"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    table, runs = [], []
    for label, overrides in SETTINGS.items():
        common = quiet_run(args.seed)
        with composed("surp_lenet300_fmnist", [*common, *overrides]) as cfg:
            metrics, _ = train(cfg)
        runs.append({"setting": label, **metrics})
        table.append(
            {
                "setting": label,
                "ratio": f"{metrics['size/ratio']:.1f}x",
                "artifact bytes": int(metrics["size/artifact_bytes"]),
                "test acc (%)": f"{100 * metrics['test/acc_artifact']:.2f}",
            }
        )
        print(table[-1], flush=True)
    path = write_results(
        NAME,
        {"runs": runs, "seed": args.seed},
        table,
        notes=f"One run per setting, seed {args.seed}, target sparsity 0.98, 10 epochs, Adam 1e-3.",
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
