"""SuRP vs Lightning's ModelPruning vs dense, LeNet-300-100 on real Fashion-MNIST, side by side in one run.

* dense: the reference recipe (10 epochs, cosine decay) at several LRs (``--dense-lrs``: its own 1e-3, the best
  dense LR we found, 2e-3, and our recipe's); every drop is taken against the best of them, per seed;
* peer: ``lightning.pytorch.callbacks.ModelPruning`` — gradual global L1 (weights and biases) to the same
  sparsities at the same epochs as ours, trained like ours (our recipe's LR and LR schedule), its other arguments
  at their defaults (so after every
  pruning step the surviving weights are rewound to their initial values, the lottery-ticket default); stored as
  compactly as a generic tool can: per tensor the non-zero positions as LEB128 gaps plus fp32 values, the whole
  thing xz-compressed (``lzma``, preset 9e);
* ours: ``SuccessivePruning`` (the ``surp_lenet300_fmnist`` recipe), artifact written with the ``surp`` codec.

Reported: test accuracy, artifact bytes, ratio vs fp32, bits per non-zero, stream bits vs the entropy of its
symbols, fit wall time.
Run: ``python -m bench.surp_lenet300_fmnist [--seeds 0 1 2] [--sparsities 0.975 0.98] [--dense-lrs ...]``.
"""

from __future__ import annotations

import argparse
import lzma
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import ModelPruning

from bench.common import composed, mean_sd_text, quiet_run, write_results
from lightning_compress.cli import train
from lightning_compress.codec.entropy import leb128
from lightning_compress.functional.successive_pruning import sparsity_schedule
from lightning_compress.module import evaluate_accuracy

NAME = "surp_lenet300_fmnist"
FP32 = 1_066_440
PARAMS = 266_610


def sparse_xz_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """Generic compact storage of a pruned model: gap-coded positions + fp32 values, xz. Returns (bytes, nonzeros)."""
    parts, nonzeros = [], 0
    for tensor in model.state_dict().values():
        flat = tensor.detach().reshape(-1).cpu().numpy()
        pos = np.flatnonzero(flat)
        nonzeros += pos.size
        parts.append(leb128(np.diff(pos, prepend=-1)) + flat[pos].astype("<f4").tobytes())
    return len(lzma.compress(b"".join(parts), preset=9 | lzma.PRESET_EXTREME)), nonzeros


def peer_amounts(target: float, epochs: int, final_fraction: float) -> list[float]:
    """Per-epoch fraction of the *remaining* weights ModelPruning removes, following our stage schedule in time."""
    stages = sparsity_schedule(target)
    prune_epochs = max(1, round(epochs * (1 - final_fraction)))
    reached = [
        stages[min(len(stages) - 1, round(len(stages) * (e + 1) / prune_epochs) - 1)] for e in range(prune_epochs)
    ]
    amounts, previous = [], 0.0
    for s in reached:
        amounts.append(1.0 - (1.0 - s) / (1.0 - previous) if s > previous else 0.0)
        previous = max(previous, s)
    return amounts + [0.0] * (epochs - prune_epochs)


def gradual_l1_peer(amounts: list[float]) -> ModelPruning:
    """Lightning's ModelPruning: global L1 (weights and biases), ``amounts[e]`` of the remaining weights at epoch e."""
    return ModelPruning(
        "l1_unstructured",
        amount=lambda e: amounts[e] if e < len(amounts) else 0.0,
        use_global_unstructured=True,
        make_pruning_permanent=True,
        verbose=0,
    )


def recipe_training() -> tuple[float, str]:
    """Our recipe's learning rate and LR-scheduler choice; the peer trains with both."""
    with composed(NAME) as cfg:
        return float(cfg.optimizer.lr), str(cfg.hydra.runtime.choices["scheduler"])


def run_peer(common: list[str], epochs: int, sparsity: float, lr: float, scheduler: str) -> dict[str, Any]:
    """ModelPruning to ``sparsity``, trained exactly like ours (Adam at ``lr``, the same LR schedule)."""
    amounts = peer_amounts(sparsity, epochs, 0.2)
    overrides = [*common, "artifact.save=false", f"scheduler={scheduler}", f"optimizer.lr={lr}"]
    with composed("dense_lenet300_fmnist", overrides) as cfg:
        m, objects = train(cfg, extra_callbacks=[gradual_l1_peer(amounts)])
    model = objects["module"].backbone
    nbytes, nonzeros = sparse_xz_bytes(model)
    total = sum(t.numel() for t in model.state_dict().values())
    return {
        "acc": evaluate_accuracy(model, objects["datamodule"].test_dataloader()),
        "bytes": nbytes,
        "sparsity": 1 - nonzeros / total,
        "nonzeros": nonzeros,
        "wall_s": m["fit/wall_s"],
    }


def run_ours(common: list[str], sparsity: float) -> dict[str, Any]:
    """The ``surp_lenet300_fmnist`` recipe at ``sparsity``; accuracy measured on the model reloaded from its file."""
    with composed(NAME, [*common, f"compress.successive_pruning.target_sparsity={sparsity}"]) as cfg:
        m, _ = train(cfg)
    return {
        "acc": m["test/acc_artifact"],
        "bytes": m["size/artifact_bytes"],
        "sparsity": m["surp/sparsity"],
        "nonzeros": round((1 - m["surp/sparsity"]) * PARAMS),
        "stream_bytes": m["surp/stream_bytes"],
        "over_entropy": m["surp/stream_over_entropy"],
        "wall_s": m["fit/wall_s"],
    }


def run_seed(
    seed: int, epochs: int, sparsities: list[float], dense_lrs: list[float], lr: float, scheduler: str
) -> dict[str, Any]:
    common = quiet_run(seed, epochs)
    out: dict[str, Any] = {"seed": seed}
    for dense_lr in dense_lrs:
        with composed("dense_lenet300_fmnist", [*common, f"optimizer.lr={dense_lr}"]) as cfg:
            m, _ = train(cfg)
        out[f"dense@{dense_lr:g}"] = {
            "acc": m["test/acc"],
            "wall_s": m["fit/wall_s"],
            "bytes": m["size/artifact_bytes"],
        }
    for s in sparsities:
        out[f"peer@{s}"] = run_peer(common, epochs, s, lr, scheduler)
        out[f"ours@{s}"] = run_ours(common, s)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.975, 0.98])
    parser.add_argument("--dense-lrs", type=float, nargs="+", default=None, help="default: 1e-3, 2e-3, ours")
    args = parser.parse_args()
    lr, scheduler = recipe_training()
    dense_lrs = list(dict.fromkeys(args.dense_lrs or [1e-3, 2e-3, lr]))
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(seed, args.epochs, args.sparsities, dense_lrs, lr, scheduler))
        print(runs[-1], flush=True)
    dense_keys = [f"dense@{x:g}" for x in dense_lrs]

    def best_dense(run: dict[str, Any]) -> float:
        return max(run[k]["acc"] for k in dense_keys)

    def stat(fn: Any, digits: int = 2) -> str:
        return mean_sd_text([fn(r) for r in runs], digits)

    def dense_row(key: str, label: str) -> dict[str, str]:
        return {
            "method": label,
            "sparsity": "0",
            "test acc (%)": stat(lambda r: 100 * r[key]["acc"]),
            "drop (pt)": "-",
            "artifact bytes": stat(lambda r: r[key]["bytes"], 0),
            "ratio vs fp32": "1.00",
            "bits / non-zero": "32",
            "bits vs entropy": "-",
            "ratio vs peer": "-",
            "fit wall (s)": stat(lambda r: r[key]["wall_s"], 1),
        }

    table = [
        dense_row(
            key,
            f"dense fp32, Adam {x:g}"
            + (" (the reference recipe)" if x == 1e-3 else "")
            + (" (our LR)" if x == lr else ""),
        )
        for key, x in zip(dense_keys, dense_lrs, strict=True)
    ]
    peer_label, ours_label = "ModelPruning (global L1) + gaps + xz", "ours: SuccessivePruning"
    for s in args.sparsities:
        for key, label in ((f"peer@{s}", peer_label), (f"ours@{s}", ours_label)):
            ours = key.startswith("ours")
            table.append(
                {
                    "method": label,
                    "sparsity": stat(lambda r, k=key: r[k]["sparsity"], 4),
                    "test acc (%)": stat(lambda r, k=key: 100 * r[k]["acc"]),
                    "drop (pt)": stat(lambda r, k=key: 100 * (best_dense(r) - r[k]["acc"])),
                    "artifact bytes": stat(lambda r, k=key: r[k]["bytes"], 0),
                    "ratio vs fp32": stat(lambda r, k=key: FP32 / r[k]["bytes"], 1),
                    "bits / non-zero": stat(lambda r, k=key: 8 * r[k]["bytes"] / r[k]["nonzeros"], 1),
                    "bits vs entropy": stat(lambda r, k=key: r[k]["over_entropy"], 4) if ours else "-",
                    "ratio vs peer": stat(lambda r, k=key, s=s: r[f"peer@{s}"]["bytes"] / r[k]["bytes"])
                    if ours
                    else "1.00",
                    "fit wall (s)": stat(lambda r, k=key: r[k]["wall_s"], 1),
                }
            )
    notes = (
        f"LeNet-300-100, real Fashion-MNIST, {args.epochs} epochs of Adam. Dense: the reference recipe (cosine "
        f"decay) at LRs {', '.join(f'{x:g}' for x in dense_lrs)}; every drop is against the best of them for the "
        f"same seed. Peer and ours: our recipe's training (Adam {lr:g}, scheduler '{scheduler}'), sparsity over "
        "all parameters; the peer prunes to the same sparsities at the same epochs. Seeds "
        f"{args.seeds}; every seed's runs share its dense reference. Artifact bytes are whole files (ours: the .lcz "
        "with header; peer: the xz file); ours' accuracy is measured on the model reloaded from its file. 'bits vs "
        "entropy' = SuRP stream bits / empirical entropy of its coded symbols; 'ratio vs peer' = peer bytes / our "
        "bytes at the same sparsity target, per seed."
    )
    payload = {"runs": runs, "seeds": args.seeds, "epochs": args.epochs, "sparsities": args.sparsities}
    path = write_results(NAME, payload, table, notes)
    print(path.read_text())


if __name__ == "__main__":
    main()
