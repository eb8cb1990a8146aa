"""A real size-accuracy front: ``lcompress -m hparams_search=pareto_<recipe>`` on Fashion-MNIST, summary kept.

Runs the two-objective Optuna NSGA-II search (artifact bytes, validation accuracy) as a user would, in a temporary
output directory, then copies the sweep's ``sweep_summary.{csv,png}`` to ``bench/results/pareto_<recipe>.{csv,png}``.
Run: ``python -m bench.pareto_sweep [--recipe surp_lenet300_fmnist] [--trials 6] [--population 3]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import RESULTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", default="surp_lenet300_fmnist")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--population", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "LC_OUTPUT_DIR": out, "WANDB_MODE": "disabled"}
        cmd = [
            sys.executable,
            "-m",
            "lightning_compress.cli",
            "-m",
            f"hparams_search=pareto_{args.recipe}",
            f"hydra.sweeper.n_trials={args.trials}",
            f"hydra.sweeper.sampler.population_size={args.population}",
            "logger=none",
            "callbacks=none",
            "trainer.enable_progress_bar=false",
        ]
        subprocess.run(cmd, env=env, check=True)
        sweep = next(Path(out).glob(f"{args.recipe}/multiruns/*"))
        RESULTS.mkdir(exist_ok=True)
        for suffix in ("csv", "png"):
            shutil.copy(sweep / f"sweep_summary.{suffix}", RESULTS / f"pareto_{args.recipe}.{suffix}")
    print((RESULTS / f"pareto_{args.recipe}.csv").read_text())


if __name__ == "__main__":
    main()
