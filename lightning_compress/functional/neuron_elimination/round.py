"""One annealing round's decision over every layer pair: solvers from the statistics, size goals, greedy elimination.

The callback gathers the statistics (on every rank, summed) and applies the decision; this decides it, on one
process, with no Lightning in sight. Also the compact form the callback's history keeps of a decision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from lightning_compress.functional.neuron_elimination.moments import ActivationMoments, rows_shortfall
from lightning_compress.functional.neuron_elimination.pairs import LayerPair
from lightning_compress.functional.neuron_elimination.solver import (
    DependenceSolver,
    Elimination,
    RoundRecord,
    greedy_round,
)
from lightning_compress.functional.neuron_elimination.surgery import consumer_columns, param_count, redistribute_

__all__ = [
    "compact_record",
    "current_pairs",
    "decide_round",
    "layer_floor",
    "leading_share",
    "params_goal",
    "redistribute_round_",
    "remap",
]


def layer_floor(pair: LayerPair, min_neurons: int, min_layer_fraction: float) -> int:
    """Neurons a layer keeps at least: ``min_neurons``, and ``min_layer_fraction`` of its original width.

    Examples:
        >>> layer_floor(LayerPair("fc1", "fc2", (), 300, 1, True), 1, 0.1)
        30
    """
    return max(min_neurons, math.ceil(min_layer_fraction * pair.channels))


def params_goal(
    dense_params: int, target: float | None, round_index: int, rounds: int
) -> tuple[int | None, int | None]:
    """(goal of round ``round_index``, final target) in parameters, or (None, None) without a size target.

    From the second round on the goals follow a geometric schedule to ``target``; the first round is lossless.

    Examples:
        >>> params_goal(1000, 0.5, 0, 3), params_goal(1000, 0.5, 1, 3), params_goal(1000, 0.5, 2, 3)
        ((None, 500), (707, 500), (500, 500))
    """
    if target is None:
        return None, None
    final = int(dense_params * target)
    if rounds == 1:
        return final, final
    if round_index == 0:
        return None, final  # the first round is the lossless one
    return int(dense_params * target ** (round_index / (rounds - 1))), final


def current_pairs(pairs: Sequence[LayerPair], alive: Sequence[Sequence[int]], shrunk: bool) -> list[LayerPair]:
    """The pairs as the model holds them now: their original widths (masked removal) or the survivors' (shrunk)."""
    if not shrunk:
        return list(pairs)
    return [replace(p, channels=len(a)) for p, a in zip(pairs, alive, strict=True)]


def decide_round(
    module: nn.Module,
    pairs: Sequence[LayerPair],
    moments: Sequence[ActivationMoments],
    alive: Sequence[Sequence[int]],
    *,
    table: Sequence[tuple[int, int | None, int | None]],
    tolerance: float,
    goal: int | None,
    target: int | None,
    floors: Sequence[int],
    score: str,
    ridge: float,
    shrunk: bool,
    min_rows_per_neuron: int,
    on_short_rows: Callable[[LayerPair, str], None],
) -> list[RoundRecord]:
    """The eliminations of one round, in original neuron indices.

    Args:
        module: the compressed module (the consumers' weights for the weight-aware score).
        pairs: the layer pairs (original widths).
        moments: each pair's calibration statistics (consumed: the solvers build their Gram matrices in them).
        alive: each pair's surviving neurons (original indices).
        table: :func:`~.surgery.param_table` of the pairs, for parameter counts.
        tolerance: this round's tolerance on the score.
        goal: this round's parameter goal (size schedule), or ``None``.
        target: the final parameter target, below which nothing more goes, or ``None``.
        floors: neurons each pair keeps at least.
        score: ``"output"`` (weight-aware) or ``"r2"``.
        ridge: relative diagonal ridge of the Gram matrices.
        shrunk: the layers were shrunk after each round (``removal="immediate"``): positions are current ones.
        min_rows_per_neuron: a pair with fewer calibration rows per neuron is skipped.
        on_short_rows: called with a skipped pair and the reason.

    Returns:
        One record per pair that was considered, its pair index and eliminations in original indices.
    """
    now = current_pairs(pairs, alive, shrunk)
    solvers, index = [], []
    for i, (pair, moment) in enumerate(zip(pairs, moments, strict=True)):
        shortfall = rows_shortfall(pair.producer, moment.count, len(alive[i]), min_rows_per_neuron)
        if shortfall is not None:
            on_short_rows(pair, shortfall)
            continue
        weight = consumer_columns(module.get_submodule(pair.consumer), now[i]) if score == "output" else None
        solvers.append(
            DependenceSolver(
                moment.mean(),
                moment.take_second_moment(),  # the solver's Gram matrix is built in this memory
                intercept=pair.intercept,
                ridge=ridge,
                alive=None if shrunk else list(alive[i]),
                consumer_weight=weight,
                overwrite=True,
            )
        )
        index.append(i)
    alive_counts = [len(a) for a in alive]

    def count(counts: Sequence[int]) -> int:
        full = list(alive_counts)
        for i, c in zip(index, counts, strict=True):
            full[i] = c
        return param_count(table, pairs, full)

    counts_now = [len(alive[i]) for i in index]
    savings = []
    for j in range(len(index)):
        fewer = list(counts_now)
        fewer[j] -= 1
        savings.append(float(max(count(counts_now) - count(fewer), 1)))
    records = greedy_round(
        solvers,
        tolerance,
        count_params=count,
        params_goal=goal,
        params_floor=target,
        savings=savings,
        min_neurons=[floors[i] for i in index],
    )
    decided = []
    for record, i in zip(records, index, strict=True):
        eliminations = record.eliminations
        if shrunk:  # solver positions are current positions: back to original indices
            original = torch.tensor(alive[i], dtype=torch.long)
            eliminations = [remap(e, original) for e in eliminations]
        decided.append(RoundRecord(i, eliminations))
    return decided


@torch.no_grad()
def redistribute_round_(
    module: nn.Module,
    pairs: Sequence[LayerPair],
    records: Sequence[RoundRecord],
    alive_before: Sequence[Sequence[int]],
    shrunk: bool,
) -> None:
    """Move each eliminated neuron's contribution onto the survivors' consumer columns (and the consumer's bias).

    ``records`` hold original indices; with ``shrunk`` layers they are mapped to the current positions first.
    """
    for record in records:
        pair = pairs[record.pair]
        consumer = module.get_submodule(pair.consumer)
        if not shrunk:
            for elimination in record.eliminations:
                redistribute_(consumer, pair, elimination)
            continue
        current = current_pairs(pairs, alive_before, shrunk)[record.pair]
        original = alive_before[record.pair]
        position = torch.full((max(original, default=-1) + 1,), -1, dtype=torch.long)
        position[torch.tensor(original, dtype=torch.long)] = torch.arange(len(original))
        for elimination in record.eliminations:
            redistribute_(consumer, current, remap(elimination, position))


def remap(elimination: Elimination, lookup: torch.Tensor) -> Elimination:
    """The same elimination with its neuron indices mapped through ``lookup`` (``lookup[old]`` is the new index)."""
    return replace(elimination, neuron=int(lookup[elimination.neuron]), survivors=lookup[elimination.survivors])


def compact_record(record: RoundRecord | Mapping[str, Any]) -> dict[str, Any]:
    """What a history keeps of one pair's round: the neurons (original indices, int32) and their scores.

    Also reads the full records (survivors and coefficients) that checkpoints of earlier versions hold.

    Examples:
        >>> compact_record({"pair": 0, "eliminations": [{"neuron": 3, "score": 0.5}]})["neurons"].tolist()
        [3]
    """
    if isinstance(record, RoundRecord):
        pair, neurons, scores = (
            record.pair,
            [e.neuron for e in record.eliminations],
            [e.score for e in record.eliminations],
        )
    elif "eliminations" in record:
        pair = int(record["pair"])
        neurons = [int(e["neuron"]) for e in record["eliminations"]]
        scores = [float(e["score"]) for e in record["eliminations"]]
    else:
        return dict(record)
    return {
        "pair": int(pair),
        "neurons": torch.tensor(neurons, dtype=torch.int32),
        "scores": torch.tensor(scores, dtype=torch.float64),
    }


def leading_share(records: Sequence[RoundRecord], share: float) -> list[RoundRecord]:
    """The same leading ``share`` of every pair's eliminations, in the order they were chosen.

    A leading part of a greedy round is itself a valid round: each elimination's survivors are the neurons alive
    when it was chosen, and the ones chosen after it only add to the redistributed columns. A share above 0 keeps
    at least one elimination (the largest record's first).
    """
    counts = [math.floor(share * len(r.eliminations) + 1e-9) for r in records]
    if share > 0 and records and not any(counts):
        counts[max(range(len(records)), key=lambda i: len(records[i].eliminations))] = 1
    return [RoundRecord(r.pair, r.eliminations[:n]) for r, n in zip(records, counts, strict=True)]
