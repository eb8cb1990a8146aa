"""Our file against NNCodec coding the same weights, on the artifact format the library writes now.

Runs ``rate_lenet300_fmnist`` (and ``rate_lenet5_fmnist``) per seed on real Fashion-MNIST, then codes the trained
network's weights with NNCodec (the MPEG NNC standard codec, DeepCABAC) in its lossless-ish mode (codebook mode, QP
-50, row skipping: decoded values within 1e-4 of ours, see ``bench.rate_fmnist.nncodec_bytes``), and compares the
bytes: our whole file (container included) against NNCodec's bitstream. NNCodec is an optional peer, never a
dependency: ``bash scripts/install_nncodec.sh && PYTHONPATH=.peers python -m bench.nncodec_fmnist``.
"""

from __future__ import annotations

import argparse
from typing import Any

from bench.common import mean_sd_text, quiet_run, write_results
from bench.rate_fmnist import nncodec_available, nncodec_bytes, run
from lightning_compress.module import evaluate_accuracy

NAME = "nncodec_fmnist"
RECIPES = {"lenet300": "rate_lenet300_fmnist", "lenet5": "rate_lenet5_fmnist"}


def measure(net: str, seed: int) -> dict[str, Any]:
    ours, objects = run(RECIPES[net], quiet_run(seed))
    size, decoded = nncodec_bytes(objects["module"].backbone)
    test = objects["datamodule"].test_dataloader()
    row = {
        "net": net,
        "seed": seed,
        "our bytes": int(ours["bytes"]),
        "nncodec bytes": size,
        "nncodec / ours": size / ours["bytes"],
        "our acc": ours["acc"],
        "nncodec acc": evaluate_accuracy(decoded, test),
    }
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--nets", nargs="+", default=["lenet300", "lenet5"], choices=list(RECIPES))
    parser.add_argument("--lenet5-seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    if not nncodec_available():
        raise SystemExit("NNCodec is not importable: bash scripts/install_nncodec.sh, then PYTHONPATH=.peers")
    runs = []
    for net in args.nets:
        for seed in args.seeds if net == "lenet300" else args.lenet5_seeds:
            runs.append(measure(net, seed))
    table = []
    for net in args.nets:
        rows = [r for r in runs if r["net"] == net]
        table.append(
            {
                "net": net,
                "recipe": RECIPES[net],
                "seeds": len(rows),
                "our file (B)": mean_sd_text([r["our bytes"] for r in rows], 0),
                "NNCodec, same weights (B)": mean_sd_text([r["nncodec bytes"] for r in rows], 0),
                "NNCodec / ours": mean_sd_text([r["nncodec / ours"] for r in rows], 3),
                "our acc (%)": mean_sd_text([100 * r["our acc"] for r in rows]),
                "NNCodec acc (%)": mean_sd_text([100 * r["nncodec acc"] for r in rows]),
            }
        )
    notes = (
        "Our artifact (format 3: container included) against NNCodec 2.1.3's bitstream of the same trained weights "
        "(codebook mode, QP -50, row skipping; its decoded values within 1e-4 of ours), on real Fashion-MNIST, "
        "10 epochs. 'NNCodec / ours' above 1 means our file is smaller. Accuracies: ours reloaded from the file, "
        "NNCodec's from its decoded weights."
    )
    print(write_results(NAME, {"runs": runs}, table, notes).read_text())


if __name__ == "__main__":
    main()
