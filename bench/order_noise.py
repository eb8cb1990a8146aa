"""How much the data order alone moves a short dense fit: the reason a callback leaves the fit's random streams alone.

The dense ResNet-18 of ``bench.resnet_defaults_fmnist`` (2 epochs of 4,000 Fashion-MNIST images as 3x32x32, seed 1),
once as it is and once per draw count ``k``: a callback that draws ``k`` numbers from the global generator at step
10 and nothing else, as a callback's own batch read or BatchNorm re-estimation did before
``lightning_compress.callbacks.randomness``. Every later epoch is then shuffled differently; the test accuracy moves.

    python -m bench.order_noise --draws 1 2 3 4
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from bench.common import mean_sd_text, write_results
from bench.defaults_fmnist import fmnist_tensors
from bench.resnet_defaults_fmnist import CALLBACKS, as_rgb32, run


class DrawAtStep(pl.Callback):
    """Draws ``count`` numbers from the global torch generator when step ``step`` starts (0: draws nothing)."""

    def __init__(self, count: int, step: int = 10) -> None:
        self.count, self.step = count, step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step and self.count:
            torch.rand(self.count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--name", default="order_noise")
    args = parser.parse_args()
    torch.set_num_threads(2)
    tensors = fmnist_tensors()
    data = {
        "train": as_rgb32(tensors["train"], 4000),
        "val": as_rgb32(tensors["val"], 1000),
        "test": as_rgb32(tensors["test"], 2000),
    }
    rows = []
    for count in [0, *args.draws]:
        name = f"dense, {count} draw(s) at step 10"
        CALLBACKS[name] = functools.partial(DrawAtStep, count)
        with tempfile.TemporaryDirectory() as tmp:
            result = run("resnet18", name, args.seed, data, 2, Path(tmp))
        rows.append({"draws": count, "test acc (%)": round(100 * result["test_acc"], 2)})
        print(rows[-1], flush=True)
    moved = [r["test acc (%)"] for r in rows[1:]]
    spread = f"with draws: {min(moved):.2f}-{max(moved):.2f}"
    table = [*rows, {"draws": spread, "test acc (%)": mean_sd_text(moved)}]
    notes = (
        f"Dense torchvision ResNet-18, 2 epochs of 4,000 Fashion-MNIST images as 3x32x32, seed {args.seed}; a callback "
        "draws the given count of numbers from the global torch generator at step 10 and does nothing else (0: none). "
        "Test accuracy on 2,000 images."
    )
    write_results(args.name, {"seed": args.seed, "runs": rows}, table, notes)


if __name__ == "__main__":
    main()
