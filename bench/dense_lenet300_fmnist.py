"""Dense reference: LeNet-300-100 on real Fashion-MNIST with the default recipe, over several seeds.

The row every compression benchmark compares against: test accuracy, accuracy of the artifact reloaded from disk,
fit wall time, artifact bytes. Run: ``python -m bench.dense_lenet300_fmnist [--seeds 0 1 2] [--epochs 10]``.
"""

from __future__ import annotations

import argparse

from bench.common import composed, mean_std, quiet_run, write_results
from lightning_compress.cli import train

NAME = "dense_lenet300_fmnist"


def run(seeds: list[int], epochs: int) -> dict[str, object]:
    runs = []
    for seed in seeds:
        overrides = quiet_run(seed, epochs)
        with composed("dense_lenet300_fmnist", overrides) as cfg:
            metrics, _ = train(cfg)
        runs.append(
            {
                "seed": seed,
                **{
                    k: metrics[k]
                    for k in (
                        "test/acc",
                        "test/acc_artifact",
                        "fit/wall_s",
                        "size/artifact_bytes",
                        "size/fp32_bytes",
                        "size/ratio",
                    )
                },
            }
        )
        print(runs[-1], flush=True)
    acc, acc_sd = mean_std([r["test/acc"] for r in runs])
    wall, wall_sd = mean_std([r["fit/wall_s"] for r in runs])
    table = [
        {
            "model": "LeNet-300-100 dense fp32",
            "epochs": epochs,
            "seeds": len(seeds),
            "test acc (%)": f"{100 * acc:.2f} ± {100 * acc_sd:.2f}",
            "artifact acc (%)": f"{100 * mean_std([r['test/acc_artifact'] for r in runs])[0]:.2f}",
            "fit wall (s)": f"{wall:.1f} ± {wall_sd:.1f}",
            "artifact bytes": int(runs[0]["size/artifact_bytes"]),
            "fp32 bytes": int(runs[0]["size/fp32_bytes"]),
            "ratio": f"{runs[0]['size/ratio']:.4f}",
        }
    ]
    return {"runs": runs, "table": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    result = run(args.seeds, args.epochs)
    path = write_results(
        NAME,
        {"runs": result["runs"]},
        result["table"],  # type: ignore[arg-type]
        notes="Default recipe `dense_lenet300_fmnist` (Adam 1e-3, cosine, batch 128), real data.",
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
