"""The memory of one NeuronElimination decision on a big net: calibration, solvers, greedy round, by malloc's bytes.

What a round of :class:`~lightning_compress.NeuronElimination` computes, without a fit around it: the net's eligible
pairs (ViT-B/16: twelve MLP layers of 3,072 units), their calibration moments over random batches until every layer
has ``--rows`` rows per neuron, one solver per layer, one greedy round with a size goal of ``--goal`` of the pairs'
parameters (the eliminations a size schedule forces), and the round's records as the callback keeps and sends them
(``to_dict`` / ``from_dict``). After each phase: the bytes malloc holds, the most it held inside the phase (sampled
every 3 ms) and the phase's time; freed memory is handed back between phases.

It runs on the code checked out, also before the change that builds the Gram matrix in the moments' memory (then
the solvers are built the way that version's callback built them: from a copy). Linux with glibc only.

Run: ``python -m bench.ne_round_memory [--net vit_b_16] [--rows 10] [--goal 0.99] [--batch 8]``. Nothing is
written to ``bench/results``: the figures are read, not tabled.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import torch

import bench.scale as scale
from bench.memory_timeline import PhasePeaks
from lightning_compress.functional import neuron_elimination as ne


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--net", default="vit_b_16", choices=sorted(scale.NETS))
    parser.add_argument("--rows", type=int, default=10, help="calibration rows per neuron")
    parser.add_argument("--goal", type=float, default=0.99, help="size goal, a fraction of the pairs' parameters")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    peaks = PhasePeaks()
    make, shape = scale.NETS[args.net]
    net = make()
    pairs, _ = ne.find_layer_pairs(net, torch.randn(1, *shape))
    print(f"{args.net}: {len(pairs)} pairs, widths {sorted({p.channels for p in pairs})}")
    peaks.report("model and pairs")

    def batches() -> Iterator[torch.Tensor]:
        while True:
            yield torch.randn(args.batch, *shape)

    moments = ne.collect_moments(net, pairs, batches(), rows_per_neuron=args.rows)
    peaks.report("calibration moments")
    in_place = hasattr(ne.ActivationMoments, "take_second_moment")
    solvers = []
    for pair, moment in zip(pairs, moments, strict=True):
        weight = ne.consumer_columns(net.get_submodule(pair.consumer), pair)
        if in_place:
            solver = ne.DependenceSolver(
                moment.mean(),
                moment.take_second_moment(),
                intercept=pair.intercept,
                consumer_weight=weight,
                overwrite=True,
            )
        else:  # the version before: built from a copy, the moments kept
            solver = ne.DependenceSolver(
                moment.mean(), moment.second_moment(), intercept=pair.intercept, consumer_weight=weight
            )
        solvers.append(solver)
    peaks.report("solvers")
    table = ne.param_table(net, pairs)
    full = ne.param_count(table, pairs, [p.channels for p in pairs])
    records = ne.greedy_round(
        solvers,
        1e-6,
        count_params=lambda counts: ne.param_count(table, pairs, list(counts)),
        params_goal=int(full * args.goal),
    )
    eliminated = sum(len(r.eliminations) for r in records)
    peaks.report(f"greedy round ({eliminated} eliminated)")
    sent = [ne.RoundRecord.from_dict(r.to_dict()) for r in records]
    peaks.report(f"records sent ({len(sent)} layers)")
    peaks.close()


if __name__ == "__main__":
    main()
