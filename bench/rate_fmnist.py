"""Training for the file's length (RateAware) vs the flagship composition vs the peers, side by side on Fashion-MNIST.

LeNet-300-100 (10 epochs of Adam, per seed):

* dense: the reference recipe at LRs 2e-3 and 3e-3 (the best per seed is the reference of every drop; 1e-3 was the
  weakest on every seed of ``bench.composed_fmnist``);
* ``full_lenet300_fmnist`` (NeuronElimination -> SuccessivePruning -> WeightSharing, magnitude decisions);
* ``rate_lenet300_fmnist`` (NeuronElimination -> RateAware -> WeightSharing) at its 300x target (3,550 bytes) and at
  larger ``target_bytes`` (a front);
* peers on the same data and training: Lightning's ``ModelPruning`` to 97.5% + gaps + xz, and the
  Deep-Compression-style peer (k-means 32 + Huffman) on that pruned model (as in ``bench.composed_fmnist``);
* NNCodec (the MPEG NNC standard codec, DeepCABAC) when it is importable (``bash scripts/install_nncodec.sh`` builds
  it apart from the project's environment, whose numpy it would downgrade; never a dependency): coding our
  rate-trained weights (the same weights as our file: the coders compared bit for bit) and, as a post-training
  compressor, the dense net with its quantization parameter swept.

LeNet-5 (Caffe sizes, ``--nets lenet5``): dense at 3e-3, ``rate_lenet5_fmnist`` at its 500x target (3,449 bytes)
and the peers.

Sizes are bytes of the file each method writes; ratios against fp32 of the original model; our accuracies are of the
model reloaded from its file; fit wall time is ``fit/wall_s`` of the same process. Run:
``python -m bench.rate_fmnist [--seeds 0 1 2] [--nets lenet300 lenet5] [--targets 3550 4500 5500]``; finished
seeds go to ``bench/results/rate_fmnist.runs.json`` (``--resume`` keeps them; ``--resume --ablation`` adds the
ablation without the rate term, ``weight=0``, to the seeds kept; ``--resume --trials --seeds 0`` the design's
alternatives on one seed; ``--summarise`` rebuilds the table and the plot from the runs file).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench.common import RESULTS, composed, mean_sd_text, net_runs, quiet_run, write_results
from bench.composed_fmnist import run_peers
from lightning_compress.cli import train
from lightning_compress.module import evaluate_accuracy

NAME = "rate_fmnist"
DENSE_LRS = (2e-3, 3e-3)
LENET300_TARGET = 3550  # 300x of LeNet-300-100's 1,066,440 fp32 bytes
LENET5_TARGET = 3449  # 500x of LeNet-5's 1,724,320 fp32 bytes
NNCODEC_QPS = (-38, -32, -26, -20, -14)


def run(recipe: str, common: list[str], extra: Sequence[str] = ()) -> tuple[dict[str, Any], Any]:
    """One recipe; accuracy of the model reloaded from its artifact. Returns (figures, the objects of the run)."""
    with composed(recipe, [*common, *extra]) as cfg:
        m, objects = train(cfg)
    module = objects["module"].backbone
    figures = {
        "acc": m.get("test/acc_artifact", m["test/acc"]),
        "bytes": m["size/artifact_bytes"],
        "ratio": m["size/ratio"],
        "params": sum(p.numel() for p in module.parameters()),
        "nonzeros": sum(int(p.count_nonzero()) for p in module.parameters()),
        "wall_s": m["fit/wall_s"],
    }
    return figures, objects


def nncodec_available() -> bool:
    try:
        import nncodec  # noqa: F401
    except ImportError:
        return False
    return True


def nncodec_bytes(module: torch.nn.Module, qp: int | None = None) -> tuple[int, torch.nn.Module]:
    """Bytes of NNCodec's bitstream for ``module``'s parameters, and the model decoded from it.

    ``qp=None`` codes the values as they are: NNC's codebook mode (our shared values are few), a fine quantization
    step (QP -50: decoded values within 1e-4 of ours) and row skipping, so the bitstream codes our weights and the
    coders are compared bit for bit. A number is NNCodec as a post-training compressor: uniform quantization at
    that QP with dependent quantization (its defaults otherwise).
    """
    import copy

    import numpy as np
    from nncodec import nnc

    params = {n: p.detach().cpu().numpy().astype(np.float32) for n, p in module.state_dict().items()}
    if qp is None:
        options: dict[str, Any] = {"qp": -50, "use_dq": False, "codebook_mode": 1, "row_skipping": True}
    else:
        options = {"qp": qp, "use_dq": True}
    stream = nnc.compress(params, bitstream_path=None, return_bitstream=True, verbose=False, **options)
    decoded = nnc.decompress(stream, verbose=False)
    out = copy.deepcopy(module).cpu()
    out.load_state_dict(
        {n: torch.from_numpy(np.asarray(v, dtype=np.float32)).reshape(params[n].shape) for n, v in decoded.items()}
    )
    return len(stream), out


def run_ablation(seed: int) -> dict[str, Any]:
    """``rate_lenet300_fmnist`` without the rate term (``weight=0``: the same cuts by magnitude alone)."""
    out, _ = run("rate_lenet300_fmnist", quiet_run(seed), ["compress.rate_aware.weight=0"])
    print("no rate term", out, flush=True)
    return {"lenet300/rate_lenet300_fmnist, weight=0": out}


#: One-seed trials of the design's alternatives: name -> (recipe, overrides). The last one is the flagship recipe
#: pruned as far as the 300x point, the magnitude-decided baseline at that size.
TRIALS: dict[str, tuple[str, list[str]]] = {
    "scale=0.25": ("rate_lenet300_fmnist", ["compress.rate_aware.scale=0.25"]),
    "steer=0 (fixed weight)": ("rate_lenet300_fmnist", ["compress.rate_aware.steer=0"]),
    "without NeuronElimination": (
        "rate_lenet300_fmnist",
        ["compress=[rate_aware,weight_sharing]", "compress.rate_aware.start=0.05"],
    ),
    "14 epochs": ("rate_lenet300_fmnist", ["trainer.max_epochs=14"]),
    "values by Ternarization, RateAware on fc1/fc2, target 6000": (
        "rate_lenet300_fmnist",
        [
            "compress=[neuron_elimination,rate_aware,ternarization]",
            "compress.rate_aware.end=0.75",
            "compress.rate_aware.final_fraction=0.1",
            "compress.rate_aware.parameters=[fc1.weight,fc2.weight]",
            "compress.rate_aware.target_bytes=6000",  # fc3 and the biases stay float32: 3.9 KB of the file
        ],
    ),
    "full_ at target_sparsity=0.985": ("full_lenet300_fmnist", ["compress.successive_pruning.target_sparsity=0.985"]),
}


#: Trials run by earlier versions, kept in the results with what changed since.
TRIAL_NOTES = {
    "values by Ternarization": "RateAware on every tensor, the head priced at 32 bits; refused up front since",
}


def run_trials(seed: int, only: Sequence[str] = ()) -> dict[str, Any]:
    """The design's alternatives (:data:`TRIALS`, or those named in ``only``) on one seed."""
    out: dict[str, Any] = {}
    for name, (recipe, overrides) in TRIALS.items():
        if only and name not in only:
            continue
        key = f"lenet300/trial: {name}"
        out[key], _ = run(recipe, quiet_run(seed), overrides)
        print(name, out[key], flush=True)
    return out


def run_seed(seed: int, nets: list[str], targets: list[int]) -> dict[str, Any]:
    common = quiet_run(seed)
    out: dict[str, Any] = {"seed": seed}
    if "lenet300" in nets:
        dense_objects = None
        for lr in DENSE_LRS:
            out[f"lenet300/dense@{lr:g}"], objects = run("dense_lenet300_fmnist", common, [f"optimizer.lr={lr}"])
            dense_objects = objects if lr == 3e-3 else dense_objects
        fp32 = 4 * out[f"lenet300/dense@{DENSE_LRS[0]:g}"]["params"]
        out["lenet300/full_lenet300_fmnist"], _ = run("full_lenet300_fmnist", common)
        print("full", out["lenet300/full_lenet300_fmnist"], flush=True)
        for target in targets:
            key = "lenet300/rate_lenet300_fmnist" + ("" if target == LENET300_TARGET else f"@{target}")
            out[key], objects = run("rate_lenet300_fmnist", common, [f"compress.rate_aware.target_bytes={target}"])
            print(key, out[key], flush=True)
            if target == LENET300_TARGET and nncodec_available():
                test = objects["datamodule"].test_dataloader()
                size, decoded = nncodec_bytes(objects["module"].backbone)
                out["lenet300/nncodec_on_rate"] = {
                    "acc": evaluate_accuracy(decoded, test),
                    "bytes": size,
                    "ratio": fp32 / size,
                    "nonzeros": out[key]["nonzeros"],
                    "wall_s": out[key]["wall_s"],
                }
        if nncodec_available() and dense_objects is not None:
            test = dense_objects["datamodule"].test_dataloader()
            for qp in NNCODEC_QPS:
                size, decoded = nncodec_bytes(dense_objects["module"].backbone, qp)
                out[f"lenet300/nncodec_dense@qp{qp}"] = {
                    "acc": evaluate_accuracy(decoded, test),
                    "bytes": size,
                    "ratio": fp32 / size,
                    "nonzeros": sum(int(p.count_nonzero()) for p in decoded.parameters()),
                    "wall_s": out["lenet300/dense@0.003"]["wall_s"],
                }
        for key, value in run_peers("dense_lenet300_fmnist", common, 10, fp32).items():
            out[f"lenet300/{key}"] = value
    if "lenet5" in nets:
        out["lenet5/dense@0.003"], _ = run("dense_lenet300_fmnist", common, ["model=lenet5", "optimizer.lr=3e-3"])
        fp32 = 4 * out["lenet5/dense@0.003"]["params"]
        out["lenet5/rate_lenet5_fmnist"], _ = run("rate_lenet5_fmnist", common)
        print("rate_lenet5", out["lenet5/rate_lenet5_fmnist"], flush=True)
        for key, value in run_peers("dense_lenet300_fmnist", [*common, "model=lenet5"], 10, fp32).items():
            out[f"lenet5/{key}"] = value
    return out


def label(key: str) -> str:
    if key.startswith("dense@"):
        return f"dense fp32, Adam {key.split('@')[1]}"
    if key.startswith("rate_lenet300_fmnist@"):
        return f"rate_ at target_bytes={key.split('@')[1]}"
    if key.startswith("trial: "):
        name = key.split(": ", 1)[1]
        return f"trial (1 seed): {name}" + (f" ({TRIAL_NOTES[name]})" if name in TRIAL_NOTES else "")
    if key.startswith("nncodec_dense@"):
        return f"peer: NNCodec on the dense net, {key.split('@')[1]}"
    return {
        "full_lenet300_fmnist": "composed: full_ (NE -> SuRP -> WS)",
        "rate_lenet300_fmnist": f"**rate_** (NE -> RateAware -> WS), target {LENET300_TARGET}",
        "rate_lenet300_fmnist, weight=0": f"ablation: rate_ without the rate term (weight=0), target {LENET300_TARGET}",
        "rate_lenet5_fmnist": f"**rate_lenet5_** (NE -> RateAware -> WS), target {LENET5_TARGET}",
        "nncodec_on_rate": "NNCodec coding the rate_ weights (same weights as our file)",
        "peer_xz": "peer: ModelPruning 0.975 + gaps + xz",
        "peer_dc": "peer: Deep-Compression style (0.975 + k-means 32 + Huffman)",
    }.get(key, key)


def summarise(runs: list[dict[str, Any]], net: str) -> list[dict[str, str]]:
    found = net_runs(runs, net)
    if found is None:
        return []
    runs, keys, dense, best, stat = found.runs, found.keys, found.dense, found.best_dense, mean_sd_text

    rows = []
    for key in keys:
        entries = [r[f"{net}/{key}"] for r in runs if f"{net}/{key}" in r]
        used = [r for r in runs if f"{net}/{key}" in r]
        dense_wall = [found.dense_wall(r) for r in used]
        rows.append(
            {
                "net": f"{net} ({len(used)} seed{'s' if len(used) > 1 else ''})",
                "method": label(key),
                "test acc (%)": stat([100 * e["acc"] for e in entries]),
                "drop (pt)": "-"
                if key in dense
                else stat([100 * (best(r) - e["acc"]) for r, e in zip(used, entries, strict=True)]),
                "worst drop (pt)": "-"
                if key in dense
                else f"{max(100 * (best(r) - e['acc']) for r, e in zip(used, entries, strict=True)):.2f}",
                "bytes": stat([e["bytes"] for e in entries], 0),
                "ratio vs fp32": stat([e["ratio"] for e in entries], 1),
                "non-zeros": stat([e["nonzeros"] for e in entries], 0),
                "fit wall vs dense": "-"
                if key in dense or "wall_s" not in entries[0]
                else stat([e["wall_s"] / w for e, w in zip(entries, dense_wall, strict=True)]),
            }
        )
    return rows


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    """Test accuracy against file bytes, every run of every seed: RateAware's front, the flagship, the peers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = [n for n in ("lenet300", "lenet5") if any(k.startswith(f"{n}/") for r in runs for k in r)]
    fig, axes = plt.subplots(1, len(nets), figsize=(6.5 * len(nets), 4.5), squeeze=False)
    for ax, net in zip(axes[0], nets, strict=True):
        groups: dict[str, list[tuple[float, float]]] = {}
        for run in runs:
            for key, entry in run.items():
                if not key.startswith(f"{net}/") or key.split("/", 1)[1].startswith("dense@"):
                    continue
                name = key.split("/", 1)[1]
                if name.startswith("trial: "):
                    continue  # one-seed trials: in the table, not on the picture
                group = (
                    "rate_ (RateAware), targets"
                    if name.startswith("rate_") and "weight=0" not in name
                    else "NNCodec on the dense net (QP sweep)"
                    if name.startswith("nncodec_dense")
                    else label(name)
                )
                groups.setdefault(group, []).append((entry["bytes"], 100 * entry["acc"]))
        for group, points in sorted(groups.items()):
            xs, ys = zip(*points, strict=True)
            ax.scatter(xs, ys, s=18, label=group)
        dense = [
            100 * max(r[k]["acc"] for k in r if k.startswith(f"{net}/dense@"))
            for r in runs
            if f"{net}/dense@0.003" in r
        ]
        if dense:
            best = sum(dense) / len(dense)
            ax.axhline(best, color="gray", lw=0.8, ls="--", label="dense (best per seed, mean)")
            ax.axhline(best - 1.0, color="gray", lw=0.8, ls=":", label="1 pt below dense")
        ax.set_xscale("log")
        ax.set_xlabel("file bytes (log)")
        ax.set_ylabel("test accuracy (%), reloaded from the file")
        ax.set_title(f"{'LeNet-300-100' if net == 'lenet300' else 'LeNet-5'} / Fashion-MNIST")
        ax.set_ylim(bottom=max(ax.get_ylim()[0], (best - 5.0) if dense else 80.0))
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--nets", nargs="+", default=["lenet300"], choices=["lenet300", "lenet5"])
    parser.add_argument("--targets", type=int, nargs="+", default=[LENET300_TARGET, 4500, 5500])
    parser.add_argument("--resume", action="store_true", help="keep the seeds already in the runs file")
    parser.add_argument("--ablation", action="store_true", help="only the no-rate-term run, added to the seeds kept")
    parser.add_argument("--summarise", action="store_true", help="only the table and the plot, from the runs file")
    parser.add_argument("--trials", nargs="*", help="only the design's alternatives (all, or those named), added")
    args = parser.parse_args(argv)
    runs_path = RESULTS / f"{NAME}.runs.json"
    runs: list[dict[str, Any]] = json.loads(runs_path.read_text()) if args.resume and runs_path.exists() else []
    for seed in [] if args.summarise else args.seeds:
        if args.ablation or args.trials is not None:
            result = {"seed": seed, **(run_ablation(seed) if args.ablation else run_trials(seed, args.trials or ()))}
        else:
            result = run_seed(seed, args.nets, args.targets)
        done = next((r for r in runs if r["seed"] == seed), None)
        if done is not None:
            done.update(result)
        else:
            runs.append(result)
        runs_path.write_text(json.dumps(runs, indent=1))
        print(json.dumps(result), flush=True)
    table = summarise(runs, "lenet300") + summarise(runs, "lenet5")
    notes = (
        "Drops are against the best dense run of the same seed, accuracies of the model reloaded from its file. "
        f"NNCodec: {'measured' if any('nncodec' in k for r in runs for k in r) else 'not installed in this run'} "
        "(`bash scripts/install_nncodec.sh`, then PYTHONPATH as it says). "
        "Run: `python -m bench.rate_fmnist` (see its docstring)."
    )
    write_results(NAME, {"runs": runs, "seeds": sorted(r["seed"] for r in runs), "targets": args.targets}, table, notes)
    plot(runs, RESULTS / f"{NAME}.png")


if __name__ == "__main__":
    main()
