"""Ternarization on real Fashion-MNIST, side by side in one run.

(a) Quantization-aware training of LeNet-300-100 (recipe ``ternary_lenet300_fmnist``, same 10 epochs as the dense
    reference): fp32 reference vs ternary weights vs ternary weights with step activations (``binary``: the paper's
    two-level ``{0, b}``; ``ternary``: our three-value staircase).
(b) NTK-LC (recipe ``ntk_mlp_fmnist``): the dense random-feature MLP 2000-2000-1000 (Gaussian weights, ReLU, only the
    head trained) vs its compression at equal widths (sparse ternary weights, matched step activations), sizes
    counted three ways: the artifact with entropy-coded symbols (honest, positions included), the artifact with
    the weights' generator seed, and the paper's convention (1 bit per non-zero weight and per neuron).

    Two ablations isolate where NTK-LC loses accuracy: ``eps = 0`` (dense +-1 weights, step activations) and
    ``ntk_activations=original`` (97% sparse ternary weights, the ReLUs kept); ``ntk_activations=staircase`` is
    our three-value alternative to the paper's two-level steps, and ``ntk_learnable_activations`` (ours) trains
    the step activations' levels and thresholds with the head.

Every size is the artifact file's bytes against the fp32 bytes of the same model.
Run: ``python -m bench.ternary_fmnist [--seeds 0] [--epochs 10] [--ntk-epochs 10] [--skip-ntk | --skip-qat]``
(``--skip-qat`` writes ``results/ternary_fmnist_ntk.*``, ``--skip-ntk`` writes ``results/ternary_fmnist_qat.*``).
"""

from __future__ import annotations

import argparse
from typing import Any

import lightning.pytorch as pl
import torch

from bench.common import composed, mean_std, quiet_run, write_results
from lightning_compress.callbacks.base import CompressionCallback
from lightning_compress.cli import train
from lightning_compress.models.random_features import RandomFeatureMLP

NAME = "ternary_fmnist"
_KEYS = ("test/acc", "test/acc_artifact", "fit/wall_s", "size/artifact_bytes", "size/fp32_bytes", "size/ratio")
#: ``ntk_mlp_fmnist`` overrides for the dense random-feature baseline (no compression, same input normalisation)
DENSE_RF_OVERRIDES = ["compress=[]", "+callbacks.calibrate._target_=bench.ternary_fmnist.CalibrateRandomFeatures"]
#: ``ntk_mlp_fmnist`` overrides for our learnable staircase (``ntk_activations=staircase`` + learnable levels)
LEARNABLE_STAIRCASE_OVERRIDES = [
    "compress.ternarization.ntk_activations=staircase",
    "compress.ternarization.ntk_learnable_activations=true",
]


class CalibrateRandomFeatures(pl.Callback):
    """The dense random-feature baseline's data normalisation, on the same 8 training batches the callback uses."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        net = CompressionCallback.target_module(pl_module)
        assert isinstance(net, RandomFeatureMLP)
        loader = trainer.fit_loop._data_source.dataloader()
        batches = [x for (x, _), _ in zip(loader, range(8), strict=False)]
        with torch.no_grad():
            net.calibrate([net.features(x) for x in batches])


def run_one(recipe: str, seed: int, epochs: int, extra: list[str]) -> dict[str, Any]:
    with composed(recipe, [*quiet_run(seed, epochs), *extra]) as cfg:
        metrics, _ = train(cfg)
    row = {k: metrics[k] for k in _KEYS}
    row.update({k: v for k, v in metrics.items() if k.startswith("ternary/")})
    print(recipe, extra, {k: round(v, 5) for k, v in row.items()}, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--ntk-epochs", type=int, default=10)
    parser.add_argument("--skip-ntk", action="store_true")
    parser.add_argument("--skip-qat", action="store_true")
    args = parser.parse_args()
    if args.skip_ntk and args.skip_qat:
        parser.error("--skip-ntk and --skip-qat together leave nothing to run")

    qat = {
        "LeNet-300-100 fp32": ("dense_lenet300_fmnist", []),
        "ternary weights (qat)": ("ternary_lenet300_fmnist", []),
        "ternary weights + binary activations {0,b}": (
            "ternary_lenet300_fmnist",
            ["compress.ternarization.activations=binary"],
        ),
        "ternary weights + ternary activations {0,b1,b2}": (
            "ternary_lenet300_fmnist",
            ["compress.ternarization.activations=ternary"],
        ),
    }
    variants = {} if args.skip_qat else qat
    if not args.skip_ntk:
        variants["RF-MLP 2000-2000-1000 dense (Gaussian, ReLU)"] = ("ntk_mlp_fmnist", DENSE_RF_OVERRIDES)
        variants["RF-MLP NTK-LC (ternary 97% zeros, step act.)"] = ("ntk_mlp_fmnist", [])
        variants["ablation: NTK-LC at eps=0 (dense +-1 weights, step act.)"] = (
            "ntk_mlp_fmnist",
            ["compress.ternarization.sparsity=0.0"],
        )
        variants["RF-MLP NTK-LC, our staircase {0,b1,b2} (ntk_activations=staircase)"] = (
            "ntk_mlp_fmnist",
            ["compress.ternarization.ntk_activations=staircase"],
        )
        variants["RF-MLP NTK-LC, step act. learnable (ntk_learnable_activations)"] = (
            "ntk_mlp_fmnist",
            ["compress.ternarization.ntk_learnable_activations=true"],
        )
        variants["RF-MLP NTK-LC, our staircase, learnable (ntk_learnable_activations)"] = (
            "ntk_mlp_fmnist",
            LEARNABLE_STAIRCASE_OVERRIDES,
        )
        variants["ablation: ternary 97% zeros, ReLU kept (ntk_activations=original)"] = (
            "ntk_mlp_fmnist",
            ["compress.ternarization.ntk_activations=original"],
        )
    runs: dict[str, list[dict[str, Any]]] = {}
    for label, (recipe, extra) in variants.items():
        epochs = args.ntk_epochs if recipe.startswith("ntk") else args.epochs
        runs[label] = [run_one(recipe, seed, epochs, extra) for seed in args.seeds]

    def reference(label: str) -> str:
        rf = label.startswith(("RF", "ablation"))
        return "RF-MLP 2000-2000-1000 dense (Gaussian, ReLU)" if rf else "LeNet-300-100 fp32"

    table = []
    for label, rows in runs.items():
        acc, acc_sd = mean_std([r["test/acc"] for r in rows])
        ref_acc = mean_std([r["test/acc"] for r in runs[reference(label)]])[0]
        row: dict[str, str | int] = {
            "model": label,
            "test acc (%)": f"{100 * acc:.2f} ± {100 * acc_sd:.2f}",
            "drop (pt)": f"{100 * (ref_acc - acc):.2f}",
            "artifact acc (%)": f"{100 * mean_std([r['test/acc_artifact'] for r in rows])[0]:.2f}",
            "artifact bytes": int(rows[0]["size/artifact_bytes"]),
            "ratio vs fp32": f"{rows[0]['size/ratio']:.1f}x",
            "fit wall (s)": f"{mean_std([r['fit/wall_s'] for r in rows])[0]:.1f}",
        }
        if "ternary/ratio_seed" in rows[0]:
            row["ratio vs fp32"] = str(row["ratio vs fp32"]) + (
                f" (seed-only {rows[0]['ternary/ratio_seed']:.0f}x; paper convention "
                f"{rows[0]['ternary/paper_ratio']:.0f}x)"
            )
        table.append(row)
    notes = (
        "Ratios: fp32 bytes of the same model / artifact file bytes. Seeds: "
        + ", ".join(map(str, args.seeds))
        + f". QAT {args.epochs} epochs (Adam 1e-3, cosine); NTK {args.ntk_epochs} epochs (Adam 1e-2, cosine, head "
        "only). The paper convention counts 1 bit per non-zero hidden weight and per neuron against 32 bits per "
        "weight and neuron (head at 32 bits on both sides)."
    )
    name = f"{NAME}_ntk" if args.skip_qat else f"{NAME}_qat" if args.skip_ntk else NAME
    print(write_results(name, {"runs": runs, "seeds": args.seeds}, table, notes).read_text())


if __name__ == "__main__":
    main()
