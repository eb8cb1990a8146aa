"""The memory of WeightSharing's search steps on a big net's weights, by malloc's bytes, without a fit around it.

The search's own operations on every parameter of the net (ViT-B/16: 86.6M values): the problem (the values it
restores), three uniform candidates written into the weights, a merge run from 24 edges (a stand-in error that
accepts every third merge, so that the run takes steps; the real one runs the model), the replay of its steps, and
the chosen indices as ``share`` receives them. After each phase: the bytes malloc holds, the most it held inside
(sampled every 3 ms) and the phase's time.

It runs on the code checked out (copy it, with ``bench/memory_timeline.py``, onto an older commit to compare).
Linux with glibc only.

Run: ``python -m bench.ws_search_memory [--net vit_b_16]``. Nothing is written to ``bench/results``.
"""

from __future__ import annotations

import argparse

import torch

import bench.scale as scale
from bench.memory_timeline import PhasePeaks
from lightning_compress.functional.weight_sharing import WeightSharingProblem, select_parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--net", default="vit_b_16", choices=sorted(scale.NETS))
    args = parser.parse_args()
    torch.manual_seed(0)
    peaks = PhasePeaks()
    net = scale.NETS[args.net][0]()
    params = [p for _, p in select_parameters(net)]
    peaks.report(f"model ({sum(p.numel() for p in params):,} values)")
    calls = [0]

    def error() -> float:
        calls[0] += 1
        return 0.5 - 1e-3 * (calls[0] % 3 == 0)

    problem = WeightSharingProblem(params, error, [False] * len(params))
    peaks.report("problem")
    for k in (16, 64, 256):
        problem.evaluate_k(k)
    peaks.report("three candidates")
    binning, _ = problem.merge_until_no_improvement(24)
    peaks.report(f"merge run ({len(problem.merge_steps)} steps)")
    replayed = problem.merged(len(problem.merge_steps))
    peaks.report("its replay")
    indices = replayed.indices.to(torch.int32)
    problem.restore()
    del problem, binning, replayed
    peaks.report("restored; the chosen indices")
    del indices
    peaks.close()


if __name__ == "__main__":
    main()
