"""One post-hoc round on a trained network: pairs, statistics, greedy elimination and shrinking in one call."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightning_compress.functional.neuron_elimination.moments import collect_moments, rows_shortfall
from lightning_compress.functional.neuron_elimination.pairs import find_layer_pairs
from lightning_compress.functional.neuron_elimination.solver import DependenceSolver, RoundRecord, greedy_round
from lightning_compress.functional.neuron_elimination.surgery import consumer_columns, replay_

__all__ = ["eliminate_dependent"]


def eliminate_dependent(
    module: nn.Module,
    inputs: Sequence[torch.Tensor],
    tolerance: float,
    *,
    layers: Sequence[str] | None = None,
    ridge: float = 1e-10,
    min_rows_per_neuron: int = 10,
    min_neurons: int = 1,
    score: str = "r2",
) -> list[RoundRecord]:
    """Post-hoc, one round: eliminate every neuron with ``1 - R^2 <= tolerance`` and shrink ``module`` in place.

    Args:
        module: the network (eval-mode statistics are taken on ``inputs``).
        inputs: calibration batches.
        tolerance: largest redundancy score ``1 - R^2`` eliminated.
        layers: restrict to these producer names (default: every eligible pair).
        ridge: relative diagonal ridge of the Gram matrices.
        min_rows_per_neuron: refuse layers with fewer calibration rows per neuron than this.
        min_neurons: neurons kept at least per layer.
        score: ``"r2"`` (``1 - R^2``) or ``"output"`` (weight-aware, see :class:`DependenceSolver`).

    Returns:
        The round's records (what :func:`replay_` applies to a fresh copy of the original model).

    Raises:
        ValueError: too few calibration rows for a layer.
    """
    pairs, _ = find_layer_pairs(module, inputs[0][:2], layers)
    moments = collect_moments(module, pairs, inputs)
    for pair, moment in zip(pairs, moments, strict=True):
        shortfall = rows_shortfall(pair.producer, moment.count, pair.channels, min_rows_per_neuron)
        if shortfall is not None:
            raise ValueError(f"{shortfall} Pass more inputs.")
    if score not in ("r2", "output"):
        raise ValueError(f"`score` must be 'r2' or 'output', got {score!r}.")
    solvers = [
        DependenceSolver(
            m.mean(),
            m.take_second_moment(),
            intercept=p.intercept,
            ridge=ridge,
            consumer_weight=consumer_columns(module.get_submodule(p.consumer), p) if score == "output" else None,
            overwrite=True,
        )
        for p, m in zip(pairs, moments, strict=True)
    ]
    records = greedy_round(solvers, tolerance, min_neurons=min_neurons)
    replay_(module, pairs, records)
    return records
