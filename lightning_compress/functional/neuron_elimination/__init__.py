"""Neuron elimination (Shah, Olivier, Raj 2020), as pure tensor functions.

A *layer pair* is a producer (Linear/Conv2d) whose output channels reach exactly one consumer (Linear/Conv2d)
through channel-wise operations only (activations, BatchNorm, pooling, flatten). The consumer's input ``a`` (the
post-activation outputs, after pooling) is what the method looks at: if neuron ``j`` satisfies
``a_j = c0 + sum_k c_k a_k`` on every input, then moving ``c_k * W[:, j]`` onto the survivors' consumer columns and
``c0 * W[:, j]`` into the consumer's bias and deleting ``j`` leaves the network function unchanged. With approximate
dependence the change of the consumer's pre-activation is ``W[:, j] * r_j`` where ``r_j`` is the regression residual.

Dependence is measured from the mean and second moment of ``a`` over calibration rows (for convolutions every
spatial position is a row), in float64. For the alive neurons the inverse ``P`` of the (ridged) covariance gives,
for every neuron at once, the residual variance of its regression on all the others, ``1 / P_jj``, and its
coefficients ``c_k = -P_jk / P_jj``; the redundancy score is ``1 - R^2 = (1 / P_jj) / Var(a_j)``. Elimination is
greedy: the most dependent neuron goes first and ``P`` is downdated to the survivors by a Schur complement instead of
being re-inverted (it is recomputed only after a near-exact elimination, where the downdate would cancel).

A consumer that zero-pads its input (a padded convolution) or has no bias cannot take an intercept exactly: those
pairs are fitted without one (uncentered second moments).

Examples:
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    >>> with torch.no_grad():
    ...     net[0].weight[5] = 2 * net[0].weight[1]  # neuron 5 is twice neuron 1
    ...     net[0].bias[5] = 2 * net[0].bias[1]
    >>> x = torch.randn(256, 4)
    >>> before = net(x)
    >>> history = eliminate_dependent(net, [x], tolerance=1e-8)
    >>> [e.neuron in (1, 5) for e in history[0].eliminations], net[0].out_features, net[2].in_features
    ([True], 5, 5)
    >>> bool((net(x) - before).abs().max() < 1e-5)
    True
"""

from __future__ import annotations

from lightning_compress.functional.neuron_elimination.moments import (
    ActivationMoments,
    collect_moments,
    consumer_rows,
    rows_shortfall,
)
from lightning_compress.functional.neuron_elimination.pairs import (
    LayerPair,
    find_layer_pairs,
    skipped_summary,
    trainable_pairs,
)
from lightning_compress.functional.neuron_elimination.posthoc import eliminate_dependent
from lightning_compress.functional.neuron_elimination.round import (
    compact_record,
    current_pairs,
    decide_round,
    layer_floor,
    leading_share,
    params_goal,
    redistribute_round_,
    remap,
)
from lightning_compress.functional.neuron_elimination.solver import (
    DependenceSolver,
    Elimination,
    RoundRecord,
    anneal_tolerance,
    greedy_round,
)
from lightning_compress.functional.neuron_elimination.surgery import (
    consumer_columns,
    elimination_masks,
    kept_indices,
    param_count,
    param_table,
    redistribute_,
    replay_,
    shrink_,
)

__all__ = [
    "ActivationMoments",
    "DependenceSolver",
    "Elimination",
    "LayerPair",
    "RoundRecord",
    "anneal_tolerance",
    "collect_moments",
    "compact_record",
    "consumer_columns",
    "consumer_rows",
    "current_pairs",
    "decide_round",
    "eliminate_dependent",
    "elimination_masks",
    "find_layer_pairs",
    "greedy_round",
    "kept_indices",
    "layer_floor",
    "leading_share",
    "param_count",
    "param_table",
    "params_goal",
    "redistribute_",
    "redistribute_round_",
    "remap",
    "replay_",
    "rows_shortfall",
    "shrink_",
    "skipped_summary",
    "trainable_pairs",
]
