"""SuRP vs Lightning's ModelPruning vs dense, LeNet-300-100 on real Fashion-MNIST, side by side in one run.

* dense: the reference recipe (10 epochs);
* peer: ``lightning.pytorch.callbacks.ModelPruning`` — gradual global L1 (weights and biases) to the same
  sparsities at the same epochs as ours, same training; stored as compactly as a generic tool can: per tensor the
  non-zero positions as LEB128 gaps plus fp32 values, the whole thing xz-compressed (``lzma``, preset 9e);
* ours: ``SuccessivePruning`` (the ``surp_lenet300_fmnist`` recipe), artifact written with the ``surp`` codec.

Reported: test accuracy, artifact bytes, ratio vs fp32, bits per non-zero, stream bits vs the entropy of its
symbols, fit wall time. Run: ``python -m bench.surp_lenet300_fmnist [--seeds 0 1] [--sparsity 0.98]``.
"""

from __future__ import annotations

import argparse
import lzma
import time
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import ModelPruning

from bench.common import composed, mean_std, quiet_run, write_results
from lightning_compress.cli import train
from lightning_compress.codec.entropy import leb128
from lightning_compress.functional.successive_pruning import sparsity_schedule
from lightning_compress.module import evaluate_accuracy

NAME = "surp_lenet300_fmnist"
FP32 = 1_066_440


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


def run_seed(seed: int, epochs: int, sparsity: float) -> dict[str, Any]:
    common = quiet_run(seed, epochs)
    out: dict[str, Any] = {"seed": seed}
    with composed("dense_lenet300_fmnist", common) as cfg:
        m, _ = train(cfg)
    out.update(dense_acc=m["test/acc"], dense_wall_s=m["fit/wall_s"], dense_bytes=m["size/artifact_bytes"])

    amounts = peer_amounts(sparsity, epochs, 0.2)
    # the peer trains exactly like ours: the same recipe schedule (constant LR), ModelPruning instead of SuRP
    with composed("dense_lenet300_fmnist", [*common, "artifact.save=false", "scheduler=none"]) as cfg:
        started = time.perf_counter()
        peer = ModelPruning(
            "l1_unstructured",
            amount=lambda e: amounts[e] if e < len(amounts) else 0.0,
            use_global_unstructured=True,
            make_pruning_permanent=True,
            verbose=0,
        )
        m, objects = train(cfg, extra_callbacks=[peer])
        wall = time.perf_counter() - started
    model = objects["module"].backbone
    peer_bytes, peer_nz = sparse_xz_bytes(model)
    total = sum(t.numel() for t in model.state_dict().values())
    out.update(
        peer_acc=evaluate_accuracy(model, objects["datamodule"].test_dataloader()),
        peer_bytes=peer_bytes,
        peer_sparsity=1 - peer_nz / total,
        peer_nonzeros=peer_nz,
        peer_wall_s=m["fit/wall_s"],
        peer_total_s=wall,
    )

    with composed(NAME, [*common, f"compress.successive_pruning.target_sparsity={sparsity}"]) as cfg:
        m, _ = train(cfg)
    nz = round((1 - m["surp/sparsity"]) * 266_610)
    out.update(
        ours_acc=m["test/acc_artifact"],
        ours_bytes=m["size/artifact_bytes"],
        ours_sparsity=m["surp/sparsity"],
        ours_nonzeros=nz,
        ours_stream_bytes=m["surp/stream_bytes"],
        ours_over_entropy=m["surp/stream_over_entropy"],
        ours_wall_s=m["fit/wall_s"],
        ours_geometric_bits=m["surp/geometric_bits_per_param"] * 266_610,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--sparsity", type=float, default=0.98)
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(seed, args.epochs, args.sparsity))
        print(runs[-1], flush=True)

    def f(key: str, scale: float = 1.0, digits: int = 2) -> str:
        mean, sd = mean_std([r[key] * scale for r in runs])
        return f"{mean:.{digits}f} ± {sd:.{digits}f}"

    def derived(fn: Any, digits: int = 2) -> str:
        mean, sd = mean_std([fn(r) for r in runs])
        return f"{mean:.{digits}f} ± {sd:.{digits}f}"

    table = [
        {
            "method": "dense fp32",
            "sparsity": "0",
            "test acc (%)": f("dense_acc", 100),
            "drop (pt)": "-",
            "artifact bytes": f("dense_bytes", digits=0),
            "ratio vs fp32": "1.00",
            "bits / non-zero": "32",
            "bits vs entropy": "-",
            "fit wall (s)": f("dense_wall_s", digits=1),
        },
        {
            "method": "ModelPruning (global L1) + gaps + xz",
            "sparsity": f("peer_sparsity", digits=4),
            "test acc (%)": f("peer_acc", 100),
            "drop (pt)": derived(lambda r: 100 * (r["dense_acc"] - r["peer_acc"])),
            "artifact bytes": f("peer_bytes", digits=0),
            "ratio vs fp32": derived(lambda r: FP32 / r["peer_bytes"], 1),
            "bits / non-zero": derived(lambda r: 8 * r["peer_bytes"] / r["peer_nonzeros"], 1),
            "bits vs entropy": "-",
            "fit wall (s)": f("peer_wall_s", digits=1),
        },
        {
            "method": "ours: SuccessivePruning (surp codec)",
            "sparsity": f("ours_sparsity", digits=4),
            "test acc (%)": f("ours_acc", 100),
            "drop (pt)": derived(lambda r: 100 * (r["dense_acc"] - r["ours_acc"])),
            "artifact bytes": f("ours_bytes", digits=0),
            "ratio vs fp32": derived(lambda r: FP32 / r["ours_bytes"], 1),
            "bits / non-zero": derived(lambda r: 8 * r["ours_bytes"] / r["ours_nonzeros"], 1),
            "bits vs entropy": f("ours_over_entropy", digits=4),
            "fit wall (s)": f("ours_wall_s", digits=1),
        },
    ]
    notes = (
        f"LeNet-300-100, real Fashion-MNIST, {args.epochs} epochs of Adam 1e-3 for all three (dense: cosine decay, "
        "its reference recipe; peer and ours: constant LR, the pruning recipe); target sparsity "
        f"{args.sparsity} over all parameters; the peer prunes to the same sparsities at the same epochs. Artifact "
        "bytes are whole files (ours: the .lcz with header; peer: the xz file). 'bits vs entropy' = SuRP stream "
        "bits / empirical entropy of its coded symbols."
    )
    path = write_results(
        NAME, {"runs": runs, "seeds": args.seeds, "epochs": args.epochs, "sparsity": args.sparsity}, table, notes
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
