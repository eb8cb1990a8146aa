"""Composed recipes vs single methods vs peers on real Fashion-MNIST, side by side in one run.

LeNet-300-100 (10 epochs of Adam):

* dense: the reference recipe at LRs 1e-3, 2e-3 and 3e-3; every drop is against the best of them, per seed;
* single methods: the ``shah_``, ``surp_``, ``ternary_`` and ``share_lenet300_fmnist`` recipes;
* composed: ``full_``, ``eliminate_ternary_``, ``eliminate_share_`` and ``surp_share_lenet300_fmnist``;
* peer 1: Lightning's ``ModelPruning`` (global L1, gradual, to 97.5%) + gap coding + xz (as in
  ``bench.surp_lenet300_fmnist``);
* peer 2 (Deep-Compression style, on peer 1's pruned model): per-tensor k-means of the non-zeros (32 values for
  weights, as Han et al. use 5 bits for FC layers; no centroid fine-tuning), then Huffman coding of the codebook
  indices and of the position gaps; bytes = Huffman code lengths + fp32 codebooks + one byte per Huffman table entry.

LeNet-5 (Caffe sizes, same training): dense at 1e-3 and 3e-3, ``full_lenet5_fmnist`` and both peers.

Sizes are bytes of the file each method writes (ours: the ``.lcz``; peer 1: the xz file; peer 2: its bit count);
ratios are against fp32 of the original model; our accuracies are measured on the model reloaded from its file.
Fit wall time is the fit alone (``fit/wall_s``), in the same process and run as the dense fits.
Run: ``python -m bench.composed_fmnist [--seeds 0 1 2] [--nets lenet300 lenet5]``. Each finished seed is appended to
``bench/results/<name>.runs.json``; ``--resume`` reuses the seeds already there (and ``--add-log LOG`` takes the seed
dicts an earlier run printed), so a long run can be split or continued; LeNet-5 fits may cover fewer seeds.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import RESULTS, composed, mean_sd_text, net_runs, quiet_run, write_results
from bench.surp_lenet300_fmnist import gradual_l1_peer, peer_amounts, sparse_xz_bytes
from lightning_compress.cli import train
from lightning_compress.functional.weight_sharing import huffman_average_length, kmeans_binning
from lightning_compress.module import evaluate_accuracy

NAME = "composed_fmnist"
PEER_SPARSITY = 0.975
DENSE_LRS = (1e-3, 2e-3, 3e-3)
LENET300 = {
    "singles": ["shah_lenet300_fmnist", "surp_lenet300_fmnist", "ternary_lenet300_fmnist", "share_lenet300_fmnist"],
    "composed": [
        "full_lenet300_fmnist",
        "eliminate_ternary_lenet300_fmnist",
        "eliminate_share_lenet300_fmnist",
        "surp_share_lenet300_fmnist",
    ],
}


def deep_compression_bytes(model: torch.nn.Module, clusters: int = 32) -> tuple[int, torch.nn.Module]:
    """Deep-Compression-style storage of a pruned model: per-tensor k-means, Huffman indices and gaps.

    Returns (bytes, the quantized copy of the model).
    """
    quantized = copy.deepcopy(model).cpu()
    total_bits = 0
    with torch.no_grad():
        for tensor in quantized.state_dict().values():
            if not tensor.is_floating_point():
                total_bits += 64 * tensor.numel()
                continue
            flat = tensor.reshape(-1)
            pos = torch.nonzero(flat).reshape(-1)
            if pos.numel() == 0:
                continue
            values = flat[pos]
            k = min(clusters, int(values.unique().numel()))
            if k >= 2:
                binning = kmeans_binning(values, k)
                flat[pos] = binning.values(torch.float32)
                idx_counts = binning.counts
            else:
                idx_counts = torch.tensor([values.numel()])
            gaps = np.diff(pos.numpy(), prepend=-1)
            gap_histogram = np.bincount(gaps)
            gap_counts = torch.from_numpy(gap_histogram[gap_histogram > 0])
            n = values.numel()
            total_bits += n * huffman_average_length(idx_counts) + n * huffman_average_length(gap_counts)
            total_bits += 32 * len(idx_counts) + 8 * (len(idx_counts) + len(gap_counts))
    return math.ceil(total_bits / 8), quantized


def run_recipe(recipe: str, common: list[str], extra: Sequence[str] = ()) -> dict[str, Any]:
    """One recipe; accuracy of the model reloaded from its artifact."""
    with composed(recipe, [*common, *extra]) as cfg:
        m, objects = train(cfg)
    module = objects["module"].backbone
    return {
        "acc": m.get("test/acc_artifact", m["test/acc"]),
        "bytes": m["size/artifact_bytes"],
        "ratio": m["size/ratio"],
        "params": sum(p.numel() for p in module.parameters()),
        "nonzeros": sum(int(p.count_nonzero()) for p in module.parameters()),
        "wall_s": m["fit/wall_s"],
    }


def run_peers(
    dense_recipe: str,
    common: list[str],
    epochs: int,
    fp32: int,
    sparsity: float = PEER_SPARSITY,
    training: Sequence[str] = ("scheduler=hold_cosine", "optimizer.lr=3e-3"),
) -> dict[str, dict[str, Any]]:
    """ModelPruning + gaps + xz, and Deep-Compression-style k-means + Huffman on the same pruned model."""
    amounts = peer_amounts(sparsity, epochs, 0.2)
    overrides = [*common, "artifact.save=false", *training]
    with composed(dense_recipe, overrides) as cfg:
        m, objects = train(cfg, extra_callbacks=[gradual_l1_peer(amounts)])
    model = objects["module"].backbone
    test = objects["datamodule"].test_dataloader()
    xz_bytes, nonzeros = sparse_xz_bytes(model)
    dc_bytes, quantized = deep_compression_bytes(model)
    return {
        "peer_xz": {
            "acc": evaluate_accuracy(model, test),
            "bytes": xz_bytes,
            "ratio": fp32 / xz_bytes,
            "nonzeros": nonzeros,
            "wall_s": m["fit/wall_s"],
        },
        "peer_dc": {
            "acc": evaluate_accuracy(quantized, test),
            "bytes": dc_bytes,
            "ratio": fp32 / dc_bytes,
            "nonzeros": nonzeros,
            "wall_s": m["fit/wall_s"],
        },
    }


def run_seed(seed: int, epochs: int, nets: list[str]) -> dict[str, Any]:
    common = quiet_run(seed, epochs)
    out: dict[str, Any] = {"seed": seed}
    if "lenet300" in nets:
        for lr in DENSE_LRS:
            out[f"lenet300/dense@{lr:g}"] = run_recipe("dense_lenet300_fmnist", common, [f"optimizer.lr={lr}"])
        fp32 = 4 * out[f"lenet300/dense@{DENSE_LRS[0]:g}"]["params"]
        for recipe in LENET300["singles"] + LENET300["composed"]:
            out[f"lenet300/{recipe}"] = run_recipe(recipe, common)
            print(recipe, out[f"lenet300/{recipe}"], flush=True)
        for key, value in run_peers("dense_lenet300_fmnist", common, epochs, fp32).items():
            out[f"lenet300/{key}"] = value
    if "lenet5" in nets:
        for lr in (1e-3, 3e-3):
            out[f"lenet5/dense@{lr:g}"] = run_recipe(
                "dense_lenet300_fmnist", common, ["model=lenet5", f"optimizer.lr={lr}"]
            )
        fp32 = 4 * out["lenet5/dense@0.001"]["params"]
        out["lenet5/full_lenet5_fmnist"] = run_recipe("full_lenet5_fmnist", common)
        print("full_lenet5_fmnist", out["lenet5/full_lenet5_fmnist"], flush=True)
        for key, value in run_peers("dense_lenet300_fmnist", [*common, "model=lenet5"], epochs, fp32).items():
            out[f"lenet5/{key}"] = value
    return out


LABELS = {
    "shah_lenet300_fmnist": "NeuronElimination (shah_)",
    "surp_lenet300_fmnist": "SuccessivePruning (surp_)",
    "ternary_lenet300_fmnist": "Ternarization (ternary_)",
    "share_lenet300_fmnist": "WeightSharing (share_)",
    "full_lenet300_fmnist": "**composed: full_** (NE -> SuRP -> WS)",
    "eliminate_ternary_lenet300_fmnist": "composed: eliminate_ternary_",
    "eliminate_share_lenet300_fmnist": "composed: eliminate_share_",
    "surp_share_lenet300_fmnist": "composed: surp_share_",
    "full_lenet5_fmnist": "**composed: full_lenet5_** (NE -> SuRP -> WS)",
    "peer_xz": f"peer: ModelPruning {PEER_SPARSITY} + gaps + xz",
    "peer_dc": f"peer: Deep-Compression style ({PEER_SPARSITY} + k-means 32 + Huffman)",
}


def summarise(runs: list[dict[str, Any]], net: str) -> list[dict[str, str]]:
    found = net_runs(runs, net)
    if found is None:
        return []
    runs, keys, dense = found.runs, found.keys, found.dense

    def stat(fn: Any, digits: int = 2) -> str:
        return mean_sd_text([fn(r) for r in runs], digits)

    peers = [k for k in keys if k.startswith("peer")]
    rows = []
    for key in keys:
        entry = f"{net}/{key}"
        is_dense = key in dense
        row = {
            "net": ("LeNet-300-100" if net == "lenet300" else "LeNet-5")
            + f" ({len(runs)} seed{'s' * (len(runs) > 1)})",
            "method": f"dense fp32, Adam {key.split('@')[1]}" if is_dense else LABELS.get(key, key),
            "test acc (%)": stat(lambda r, e=entry: 100 * r[e]["acc"]),
            "drop (pt)": "-" if is_dense else stat(lambda r, e=entry: 100 * (found.best_dense(r) - r[e]["acc"])),
            "bytes": stat(lambda r, e=entry: r[e]["bytes"], 0),
            "ratio vs fp32": stat(lambda r, e=entry: r[e]["ratio"], 1),
            "non-zeros": stat(lambda r, e=entry: r[e]["nonzeros"], 0),
            "vs best peer": "-"
            if is_dense or key in peers
            else stat(lambda r, e=entry: min(r[f"{net}/{p}"]["bytes"] for p in peers) / r[e]["bytes"], 2),
            "fit wall (s)": stat(lambda r, e=entry: r[e]["wall_s"], 1),
            "wall vs dense": "-" if is_dense else stat(lambda r, e=entry: r[e]["wall_s"] / found.dense_wall(r), 2),
        }
        rows.append(row)
    return rows


#: marker and colour per method (one colour each, on every panel): circles alone, stars composed, crosses peers
STYLE = {
    "shah": ("o", "tab:blue"),
    "share": ("o", "tab:orange"),
    "surp": ("o", "tab:green"),
    "ternary": ("o", "tab:red"),
    "eliminate_share": ("*", "tab:purple"),
    "eliminate_ternary": ("*", "tab:brown"),
    "surp_share": ("*", "tab:cyan"),
    "full": ("*", "black"),
    "peer_dc": ("X", "tab:pink"),
    "peer_xz": ("P", "tab:olive"),
}


def plot(runs: list[dict[str, Any]], nets: list[str], path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"lenet300": "LeNet-300-100", "lenet5": "LeNet-5"}
    fig, axes = plt.subplots(1, len(nets), figsize=(5.5 * len(nets), 4.6), squeeze=False)
    handles: dict[str, Any] = {}
    for ax, net in zip(axes[0], nets, strict=True):
        net_runs = [r for r in runs if any(k.startswith(f"{net}/") for k in r)]
        keys = sorted({k.split("/", 1)[1] for k in net_runs[0] if k.startswith(f"{net}/")}) if net_runs else []
        for key in keys:
            ratios = [r[f"{net}/{key}"]["ratio"] for r in net_runs]
            accs = [100 * r[f"{net}/{key}"]["acc"] for r in net_runs]
            if key.startswith("dense"):  # the learning rates are one reference: one grey label
                label, (marker, colour) = "dense fp32 (Adam, each LR)", ("o", "0.7")
            else:
                label = LABELS.get(key, key).replace("**", "")
                if key.startswith("full"):  # the main recipe: one label for both nets
                    label = "composed: full_ (NE -> SuRP -> WS)"
                marker, colour = STYLE[key.removesuffix("_fmnist").removesuffix("_lenet300").removesuffix("_lenet5")]
            handles[label] = ax.scatter(ratios, accs, marker=marker, s=110 if marker == "*" else 34, color=colour)
        ax.set_xscale("log")
        ax.set_xlabel("compression ratio vs fp32 (file bytes)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{titles[net]} / Fashion-MNIST")
        ax.grid(alpha=0.3)
    # one legend under both panels: inside the axes it covered points
    rank = {"dense": 0, "peer": 3, "composed": 2}  # dense, each method alone, composed, peers
    order = sorted(handles, key=lambda label: rank.get(label.split()[0].rstrip(":"), 1))
    fig.legend([handles[k] for k in order], order, loc="lower center", ncol=3, fontsize=7.5, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.035 * ((len(handles) + 2) // 3), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--nets", nargs="+", default=["lenet300", "lenet5"], choices=["lenet300", "lenet5"])
    parser.add_argument("--name", default=NAME, help="results file name (a partial run: another name)")
    parser.add_argument("--resume", action="store_true", help="reuse the seeds already in <name>.runs.json")
    parser.add_argument("--add-log", default=None, help="add the seed dicts an earlier run printed to this log")
    args = parser.parse_args()
    store = RESULTS / f"{args.name}.runs.json"
    runs: list[dict[str, Any]] = json.loads(store.read_text()) if args.resume and store.is_file() else []
    if args.add_log:
        for line in Path(args.add_log).read_text().splitlines():
            if line.startswith("{'seed': "):
                runs.append(ast.literal_eval(line))
    for seed in args.seeds:
        if any(r["seed"] == seed for r in runs):
            continue
        runs.append(run_seed(seed, args.epochs, args.nets))
        print(runs[-1], flush=True)
        store.write_text(json.dumps(runs, indent=1))
    runs.sort(key=lambda r: r["seed"])
    store.write_text(json.dumps(runs, indent=1))
    nets = [n for n in ("lenet300", "lenet5") if any(k.startswith(f"{n}/") for r in runs for k in r)]
    table = []
    for net in nets:
        table += summarise(runs, net)
    notes = (
        f"Real Fashion-MNIST, {args.epochs} epochs of Adam, seeds {sorted(r['seed'] for r in runs)} (per net in its "
        "rows). Drops are against the best dense run "
        "of the same seed (LeNet-300-100: LRs 1e-3, 2e-3, 3e-3; LeNet-5: 1e-3, 3e-3). Bytes are whole files (ours: "
        "the .lcz with header); ours' accuracy is measured on the model reloaded from its file. 'vs best peer' = "
        "smallest peer file / ours, per seed. 'wall vs dense' = fit wall time / the fastest dense fit of the seed, "
        "same process. The peers prune to 97.5% with the same training (Adam 3e-3, hold then cosine). Plot: "
        f"{args.name}.png."
    )
    payload = {"runs": runs, "seeds": sorted(r["seed"] for r in runs), "epochs": args.epochs}
    path = write_results(args.name, payload, table, notes)
    plot(runs, nets, RESULTS / f"{args.name}.png")
    print(path.read_text())


if __name__ == "__main__":
    main()
