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

Example:
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

import gc
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from lightning_compress.functional.forward import call_forward, to_device

__all__ = [
    "ActivationMoments",
    "DependenceSolver",
    "Elimination",
    "LayerPair",
    "RoundRecord",
    "anneal_tolerance",
    "collect_moments",
    "consumer_columns",
    "consumer_rows",
    "eliminate_dependent",
    "elimination_masks",
    "find_layer_pairs",
    "greedy_round",
    "kept_indices",
    "param_count",
    "param_table",
    "redistribute_",
    "replay_",
    "rows_shortfall",
    "shrink_",
]

#: Autograd node names of operations that act on every channel separately (allowed between producer and consumer).
#: Operations torch-pruning traces as separate nodes that are the consumer Linear's own product (3-D inputs of a
#: Linear, e.g. a transformer's feed-forward block, trace as reshape -> addmm/mm -> reshape).
CONSUMER_OPS = ("AddmmBackward", "MmBackward")
CHANNELWISE_OPS = (
    "Relu",
    "Threshold",
    "Gelu",
    "Silu",
    "Sigmoid",
    "Tanh",
    "Elu",
    "Hardtanh",
    "Hardswish",
    "Hardsigmoid",
    "Mish",
    "Softplus",
    "LeakyRelu",
    "MaxPool",
    "AvgPool",
    "AdaptiveAvgPool",
    "AdaptiveMaxPool",
    "Mean",
    "Clone",
    "Dropout",
    "Contiguous",
    "TBackward",  # the transposed weight of a Linear consumer (nn.Linear traces as addmm(bias, x, W.t()))
)


# --------------------------------------------------------------------------------------------------------------------
# Layer pairs
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerPair:
    """A producer whose channels feed exactly one consumer through channel-wise operations (plain data).

    Attributes:
        producer: module name of the Linear/Conv2d whose output channels are the neurons.
        consumer: module name of the Linear/Conv2d that reads them.
        norms: names of the per-channel layers between them, whose entries go with the neuron: BatchNorm (also
            SyncBatchNorm) and depthwise convolutions (MobileNet's inverted residual: expand -> depthwise ->
            project is one pair, the expansion channels its neurons).
        channels: number of neurons (producer output channels) in the original model.
        spatial: consumer inputs per neuron for a Linear consumer after a flatten (``C*H*W`` inputs), else 1.
        intercept: whether the regression has an intercept (absorbed by the consumer's bias); False when the
            consumer zero-pads or has no bias.
    """

    producer: str
    consumer: str
    norms: tuple[str, ...]
    channels: int
    spatial: int
    intercept: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (for checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerPair:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**data, "norms": tuple(data["norms"])})


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor.")
    return weight


def _bias(module: nn.Module) -> torch.Tensor | None:
    bias = getattr(module, "bias", None)
    return bias if isinstance(bias, torch.Tensor) else None


def _zero_pads(layer: nn.Module) -> bool:
    if not isinstance(layer, nn.Conv2d):
        return False
    padding = layer.padding
    return padding == "same" or (isinstance(padding, tuple) and any(int(p) > 0 for p in padding))


def find_layer_pairs(
    module: nn.Module, example_input: Any, names: Sequence[str] | None = None
) -> tuple[list[LayerPair], dict[str, str]]:
    """Find the eligible layer pairs of ``module`` by tracing it with torch-pruning's dependency graph.

    A producer is eligible when removing one of its output channels removes, in the dependency graph, only that
    channel's BatchNorm entries, channel-wise operations and the input channel of exactly one ungrouped
    Linear/Conv2d consumer. Channels coupled by residual additions (several producers in one group), branches
    (several consumers) and grouped or depthwise convolutions are left alone.

    Args:
        module: the network (it is run once in eval mode on ``example_input``).
        example_input: one input batch (or a tuple of positional inputs).
        names: restrict to these producer module names (each must exist and be eligible).

    Returns:
        The eligible pairs in module order, and the skipped Linear/Conv2d layers with the reason.

    Raises:
        ValueError: a name in ``names`` is not a module of ``module`` or not eligible (the reason is given).
    """
    module_names = {m: n for n, m in module.named_modules()}
    if names is not None:
        unknown = [n for n in names if n not in dict(module.named_modules())]
        if unknown:
            raise ValueError(f"`layers` names modules that do not exist: {unknown}.")
    was_training = module.training
    module.eval()
    try:
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(module, example_inputs=example_input, verbose=False)
    finally:
        module.train(was_training)
    pairs: list[LayerPair] = []
    skipped: dict[str, str] = {}
    for layer in module.modules():
        if not isinstance(layer, nn.Linear | nn.Conv2d) or layer not in graph.module2node:
            continue
        name = module_names[layer]
        if names is not None and name not in names:
            continue
        reason, pair = _pair_of(graph, layer, name, module_names)
        if pair is None:
            skipped[name] = reason
        else:
            pairs.append(pair)
    # torch-pruning's graph is a web of reference cycles through the traced autograd nodes, which hold the example
    # forward's activations: without a collection they stay alive for the whole fit (62 MB on ResNet-18).
    del graph
    gc.collect()
    if names is not None:
        bad = {n: skipped.get(n, "not a Linear/Conv2d reached by the forward pass") for n in names}
        bad = {n: r for n, r in bad.items() if n not in {p.producer for p in pairs}}
        if bad:
            raise ValueError(f"`layers` contains layers that cannot be eliminated from: {bad}.")
    return pairs, skipped


def _depthwise(layer: nn.Module, channels: int) -> bool:
    """A convolution with one filter per channel of ``channels`` (``groups == in == out``)."""
    return isinstance(layer, nn.Conv2d) and layer.groups == layer.in_channels == layer.out_channels == channels > 1


def _pair_of(
    graph: tp.DependencyGraph, layer: nn.Module, name: str, module_names: Mapping[nn.Module, str]
) -> tuple[str, LayerPair | None]:
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        return "grouped convolution", None
    channels = _weight(layer).shape[0]
    pruner = graph.get_pruner_of_module(layer)
    group = graph.get_pruning_group(layer, pruner.prune_out_channels, list(range(channels)))
    consumers: list[nn.Module] = []
    norms: list[str] = []
    for dep, _ in group.items:
        target = dep.target.module
        if target is layer:
            continue
        if _depthwise(target, channels):  # a filter per channel: it goes with the neuron, like a norm's entry
            if module_names[target] not in norms:
                norms.append(module_names[target])
            continue
        if isinstance(target, nn.Linear | nn.Conv2d):
            if graph.is_out_channel_pruning_fn(dep.handler):
                return f"output channels coupled with {module_names.get(target, '?')} (residual addition)", None
            if isinstance(target, nn.Conv2d) and target.groups != 1:
                return f"consumer {module_names.get(target, '?')} is a grouped convolution", None
            consumers.append(target)
        elif isinstance(target, nn.modules.batchnorm._BatchNorm):
            if module_names[target] not in norms:
                norms.append(module_names[target])
        elif type(target).__name__ == "_ElementWiseOp":
            op = str(getattr(target, "_grad_fn", ""))
            if op.startswith(CONSUMER_OPS):
                continue  # the consumer Linear's own matmul, traced apart when its input has more than 2 dims
            if op.startswith(("Add", "Sub", "Cat")):
                return f"channels coupled with other layers by {op} (residual addition or concatenation)", None
            if not any(op.startswith(allowed) for allowed in CHANNELWISE_OPS):
                return f"operation {op} between producer and consumer is not known to be channel-wise", None
        elif type(target).__name__ not in ("_ReshapeOp", "_FlattenOp"):
            return f"{type(target).__name__} between producer and consumer", None
    if not consumers:
        return "no Linear/Conv2d consumer (an output layer)", None
    if len(consumers) != 1:
        return f"its outputs reach {len(consumers)} Linear/Conv2d consumers (need exactly 1)", None
    consumer = consumers[0]
    consumer_inputs = _weight(consumer).shape[1]
    if consumer_inputs % channels:
        return f"consumer {module_names[consumer]} has {consumer_inputs} inputs for {channels} channels", None
    intercept = _bias(consumer) is not None and not _zero_pads(consumer)
    pair = LayerPair(name, module_names[consumer], tuple(norms), channels, consumer_inputs // channels, intercept)
    return "", pair


# --------------------------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------------------------
def consumer_rows(inputs: torch.Tensor, channels: int, linear: bool = False) -> torch.Tensor:
    """The consumer's input as observation rows ``[rows, channels]``.

    A Linear input ``[N, C]`` is already rows, ``[N, T, C]`` (a sequence, ``linear=True``) gives ``N*T`` rows; a
    flattened ``[N, C*S]`` gives ``N*S`` rows; a convolution input ``[N, C, H, W]`` gives ``N*H*W`` rows (every
    spatial position is an observation).

    Example:
        >>> consumer_rows(torch.arange(8.0).reshape(1, 2, 2, 2), 2).tolist()
        [[0.0, 4.0], [1.0, 5.0], [2.0, 6.0], [3.0, 7.0]]
        >>> consumer_rows(torch.arange(8.0).reshape(1, 4, 2), 2, linear=True).shape
        torch.Size([4, 2])
    """
    if linear and inputs.dim() > 2:  # a Linear acts on the last dimension: every leading index is an observation
        inputs = inputs.reshape(-1, inputs.shape[-1])
    if inputs.dim() == 2:
        n, features = inputs.shape
        if features % channels:
            raise ValueError(f"{features} inputs are not a multiple of {channels} channels.")
        return inputs.reshape(n, channels, features // channels).transpose(1, 2).reshape(-1, channels)
    return inputs.movedim(1, -1).reshape(-1, channels)


class ActivationMoments:
    """Running row count, sum and sum of outer products of a layer's activations (float64).

    Example:
        >>> m = ActivationMoments(2)
        >>> m.update(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        >>> m.mean().tolist(), m.covariance().tolist()
        ([2.0, 3.0], [[1.0, 1.0], [1.0, 1.0]])
    """

    def __init__(self, channels: int, device: torch.device | str | None = None) -> None:
        self.count = 0
        self.total = torch.zeros(channels, dtype=torch.float64, device=device)
        self.outer = torch.zeros(channels, channels, dtype=torch.float64, device=device)

    def update(self, rows: torch.Tensor) -> None:
        """Add observation rows ``[rows, channels]``."""
        rows = rows.detach().to(self.total.device, torch.float64)
        self.count += rows.shape[0]
        self.total += rows.sum(0)
        self.outer += rows.T @ rows

    def as_tensor(self) -> torch.Tensor:
        """Count, sums and outer products packed in one float64 tensor (for a distributed sum)."""
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=self.total.device)
        return torch.cat([count, self.total, self.outer.reshape(-1)])

    def load_tensor(self, packed: torch.Tensor) -> None:
        """Inverse of :meth:`as_tensor`."""
        n = self.total.numel()
        packed = packed.to(self.total.device, torch.float64)
        self.count = round(float(packed[0]))
        self.total = packed[1 : n + 1].clone()
        self.outer = packed[n + 1 :].reshape(n, n).clone()

    def mean(self) -> torch.Tensor:
        """Mean activation per neuron."""
        return self.total / max(self.count, 1)

    def second_moment(self) -> torch.Tensor:
        """``E[a a^T]``."""
        return self.outer / max(self.count, 1)

    def take_second_moment(self) -> torch.Tensor:
        """``E[a a^T]`` computed in the outer products' own memory, which this object gives up (left empty).

        For :class:`DependenceSolver` with ``overwrite=True``: one ``[channels, channels]`` float64 matrix per layer
        instead of three (ViT-B/16's twelve 3,072-unit layers: 76 MB each).
        """
        second = self.outer.div_(max(self.count, 1))
        self.outer = torch.empty(0, 0, dtype=torch.float64, device=second.device)
        return second

    def covariance(self) -> torch.Tensor:
        """``E[a a^T] - E[a] E[a]^T``."""
        mean = self.mean()
        return self.second_moment() - torch.outer(mean, mean)


def collect_moments(
    module: nn.Module,
    pairs: Sequence[LayerPair],
    inputs: Iterable[Any],
    rows_per_neuron: int | None = None,
) -> list[ActivationMoments]:
    """Accumulate every pair's consumer-input moments over ``inputs`` (eval mode, no gradients).

    Each element of ``inputs`` is one batch's forward arguments: a tensor, a tuple or a dict (see
    :func:`~lightning_compress.functional.forward.call_forward`).

    Stops early once every pair has ``rows_per_neuron`` rows per neuron (when given). The module's train/eval
    mode is restored afterwards.
    """
    device = next(module.parameters()).device
    moments = [ActivationMoments(p.channels, device) for p in pairs]
    handles = []
    for pair, moment in zip(pairs, moments, strict=True):

        def hook(
            layer: nn.Module, args: tuple[Any, ...], pair: LayerPair = pair, moment: ActivationMoments = moment
        ) -> None:
            moment.update(consumer_rows(args[0], pair.channels, linear=isinstance(layer, nn.Linear)))

        handles.append(module.get_submodule(pair.consumer).register_forward_pre_hook(hook))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            for x in inputs:
                call_forward(module, to_device(x, device))
                if rows_per_neuron is not None and all(
                    m.count >= rows_per_neuron * p.channels for p, m in zip(pairs, moments, strict=True)
                ):
                    break
    finally:
        module.train(was_training)
        for handle in handles:
            handle.remove()
    return moments


def rows_shortfall(layer: str, rows: int, neurons: int, min_rows_per_neuron: int) -> str | None:
    """Why ``rows`` calibration rows are too few for ``neurons`` neurons, or ``None`` when they suffice.

    With too few rows every neuron looks dependent on the others (the rank artefact).

    Example:
        >>> rows_shortfall("fc1", 3000, 300, 10) is None
        True
    """
    if rows >= min_rows_per_neuron * neurons:
        return None
    return (
        f"Layer {layer}: {rows} calibration rows for {neurons} neurons; at least `min_rows_per_neuron`="
        f"{min_rows_per_neuron} per neuron are needed (with too few rows every neuron looks dependent)."
    )


# --------------------------------------------------------------------------------------------------------------------
# Greedy elimination
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Elimination:
    """One eliminated neuron and how its activation was redistributed (plain data; indices are original).

    Survivors and coefficients are 1-D tensors: as tuples a Python int or float costs 28-32 bytes against a
    tensor entry's 8, and a round on ViT-B/16 eliminates thousands of neurons with thousands of survivors each.

    Attributes:
        neuron: index of the neuron among the producer's original outputs.
        survivors: original indices of the neurons alive at that moment (the regressors; int64).
        coefficients: regression coefficient of each survivor (float64).
        intercept: the constant term (0 for pairs without intercept).
        score: its ``1 - R^2`` when it was eliminated.
    """

    neuron: int
    survivors: torch.Tensor
    coefficients: torch.Tensor
    intercept: float
    score: float


@dataclass
class RoundRecord:
    """The eliminations of one pair in one round (plain data)."""

    pair: int
    eliminations: list[Elimination] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (for checkpoints): survivors and coefficients as tensors.

        A Python float or int costs 24-32 bytes and a tensor entry 4-8: a ResNet-50's history of thousands of
        eliminations, each with its hundreds of survivors, would otherwise take about five times the memory.
        """
        return {
            "pair": self.pair,
            "eliminations": [
                {
                    "neuron": e.neuron,
                    "survivors": e.survivors.to("cpu", torch.int32),
                    "coefficients": e.coefficients.to("cpu", torch.float64),
                    "intercept": e.intercept,
                    "score": e.score,
                }
                for e in self.eliminations
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundRecord:
        """Inverse of :meth:`to_dict`."""
        elims = [
            Elimination(
                int(e["neuron"]),
                torch.as_tensor(e["survivors"]).to(torch.long),
                torch.as_tensor(e["coefficients"], dtype=torch.float64),
                float(e["intercept"]),
                float(e["score"]),
            )
            for e in data["eliminations"]
        ]
        return cls(int(data["pair"]), elims)


def _without_row(matrix: torch.Tensor, position: int) -> torch.Tensor:
    """A copy of ``matrix`` without row ``position`` (two block copies; an index gather is several times slower)."""
    return torch.cat([matrix[:position], matrix[position + 1 :]])


def _without(matrix: torch.Tensor, position: int) -> torch.Tensor:
    """A copy of a square ``matrix`` without row and column ``position``."""
    n = matrix.shape[0]
    out = torch.empty(n - 1, n - 1, dtype=matrix.dtype, device=matrix.device)
    p = position
    out[:p, :p] = matrix[:p, :p]
    out[:p, p:] = matrix[:p, p + 1 :]
    out[p:, :p] = matrix[p + 1 :, :p]
    out[p:, p:] = matrix[p + 1 :, p + 1 :]
    return out


def _pack_upper(matrix: torch.Tensor) -> torch.Tensor:
    """The upper triangle of a square matrix (with its diagonal), row by row, in one 1-D tensor."""
    n = matrix.shape[0]
    packed = torch.empty(n * (n + 1) // 2, dtype=matrix.dtype, device=matrix.device)
    start = 0
    for i in range(n):
        packed[start : start + n - i] = matrix[i, i:]
        start += n - i
    return packed


def _unpack_upper(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The symmetric ``[n, n]`` matrix whose upper triangle :func:`_pack_upper` packed (the same values)."""
    matrix = torch.zeros(n, n, dtype=packed.dtype, device=packed.device)
    start = 0
    for i in range(n):
        matrix[i, i:] = packed[start : start + n - i]
        start += n - i
    return matrix.add_(matrix.triu(1).T)


#: Below this score an elimination is "near-exact": the Schur downdate would cancel catastrophically.
_NEAR_EXACT = 1e-6


class DependenceSolver:
    """Greedy elimination state of one layer: the alive neurons and the inverse of their ridged Gram matrix.

    Args:
        mean: mean activation of every (original) neuron.
        second_moment: ``E[a a^T]`` over the original neurons.
        intercept: regress with an intercept (covariance) or without (uncentered second moments).
        ridge: added to the diagonal, relative to its mean (conditioning; dead neurons make it singular).
        alive: original indices still alive (default all).
        consumer_weight: optional ``[neurons, features]`` matrix, each original neuron's consumer columns
            flattened (see :func:`consumer_columns`). With it the score is weight-aware (our design): the
            fraction of the consumer's pre-activation variance ``tr(W Sigma W^T)`` that eliminating the neuron
            loses, ``r_j ||W_j||^2 / tr(W Sigma W^T)``; survivors' columns are updated as they are redistributed.

    Example:
        >>> a = torch.randn(1000, 3, generator=torch.Generator().manual_seed(0))
        >>> a = torch.cat([a, a[:, :1] + 2 * a[:, 1:2] + 3], dim=1)  # neuron 3 = a0 + 2 a1 + 3
        >>> m = ActivationMoments(4); m.update(a)
        >>> solver = DependenceSolver(m.mean(), m.second_moment(), intercept=True)
        >>> score, j = solver.best()
        >>> e = solver.eliminate(j)
        >>> e.neuron, [round(c, 6) + 0.0 for c in e.coefficients.tolist()], round(e.intercept, 6), solver.alive
        (3, [1.0, 2.0, 0.0], 3.0, [0, 1, 2])
    """

    def __init__(
        self,
        mean: torch.Tensor,
        second_moment: torch.Tensor,
        *,
        intercept: bool,
        ridge: float = 1e-10,
        alive: Sequence[int] | None = None,
        consumer_weight: torch.Tensor | None = None,
        overwrite: bool = False,
    ) -> None:
        self.intercept = intercept
        self.alive = list(range(mean.numel())) if alive is None else [int(i) for i in alive]
        index = torch.tensor(self.alive, dtype=torch.long, device=mean.device)
        everyone = self.alive == list(range(mean.numel()))
        mean = mean.double()[index]
        second = second_moment.double()
        if not everyone:
            second = second[index[:, None], index]
        elif not overwrite or second is not second_moment:
            second = second.clone()
        # from here `second` is this solver's own memory: it becomes the Gram matrix in place (the same operations,
        # so the same bits, as the out-of-place formulas; only one [n, n] matrix besides it at a time)
        self.mean = mean
        second_diagonal = second.diagonal().clone()
        self.variance = (second_diagonal - mean * mean).clamp_min(0.0)
        self.weight: torch.Tensor | None = None
        self.output_variance = 1.0
        if consumer_weight is not None:
            self.weight = consumer_weight.to(mean.device, torch.float64)[index]
            product = self.weight @ self.weight.T
            total = float(product.mul_(second - torch.outer(mean, mean)).sum())
            del product
            self.output_variance = total if total > 0 else 1.0
        if intercept:
            second.sub_(torch.outer(mean, mean))
        second.add_(second.T.clone()).div_(2)
        diag = second.diagonal()
        scale = float(diag.mean()) if diag.numel() and float(diag.mean()) > 0 else 1.0
        self.delta = float(ridge) * scale
        # dead neurons: constant (with intercept) or always zero (without); removable with c = 0
        self.dead = (self.variance if intercept else second_diagonal) <= 1e-12 * scale
        self._size = len(self.alive)
        self._rows = torch.arange(self._size, device=mean.device)
        # the Gram matrix is read again only to re-invert after a near-exact elimination: kept as its upper
        # triangle at its first size (it is exactly symmetric), the alive neurons' rows picked out when needed
        self._gram = _pack_upper(second)
        self._invert(second)

    @property
    def gram(self) -> torch.Tensor:
        """The (centred, when with intercept) Gram matrix of the alive neurons, without the ridge."""
        gram = _unpack_upper(self._gram, self._size)
        return gram if self._rows.numel() == self._size else gram[self._rows[:, None], self._rows]

    def _invert(self, gram: torch.Tensor | None = None) -> None:
        """Invert the ridged Gram matrix (``gram``'s memory is overwritten when given; default: :attr:`gram`)."""
        ridged = self.gram if gram is None else gram
        ridged.diagonal().add_(self.delta)  # = gram + delta * I, bit for bit
        factor, info = torch.linalg.cholesky_ex(ridged)
        if int(info) == 0:
            del ridged
            self.inverse = torch.cholesky_inverse(factor)
        else:  # not positive definite in floating point: fall back to a general inverse
            del factor
            self.inverse = torch.linalg.inv(ridged)
        # symmetrising after a downdate changes nothing when the inverse is exactly symmetric (it then stays so)
        self._symmetric = bool(torch.equal(self.inverse, self.inverse.T))

    def scores(self) -> torch.Tensor:
        """``1 - R^2`` of every alive neuron (0 for dead ones), in the order of :attr:`alive`."""
        residual = 1.0 / self.inverse.diagonal().clamp_min(1e-300)
        if self.weight is not None:
            score = residual * self.weight.pow(2).sum(1) / self.output_variance
        else:
            score = residual / self.variance.clamp_min(self.delta)
        return torch.where(self.dead, torch.zeros_like(score), score)

    def best(self) -> tuple[float, int]:
        """Lowest score and its position in :attr:`alive` (``(inf, -1)`` when at most one neuron is alive)."""
        if len(self.alive) <= 1:
            return math.inf, -1
        scores = self.scores()
        position = int(torch.argmin(scores))
        return float(scores[position]), position

    def eliminate(self, position: int) -> Elimination:
        """Eliminate the alive neuron at ``position``: its regression on the others, and the downdate."""
        score = float(self.scores()[position])
        device = self.inverse.device
        keep_index = torch.cat(
            [torch.arange(position, device=device), torch.arange(position + 1, len(self.alive), device=device)]
        )
        pivot = self.inverse[position, position].clone()  # not a view: the old inverse is freed below
        if bool(self.dead[position]):
            coefficients = torch.zeros(len(self.alive) - 1, dtype=torch.float64, device=device)
        else:
            coefficients = -self.inverse[position, keep_index] / pivot
        intercept = float(self.mean[position] - coefficients @ self.mean[keep_index]) if self.intercept else 0.0
        survivors = self.alive[:position] + self.alive[position + 1 :]
        elimination = Elimination(
            neuron=self.alive[position],
            survivors=torch.tensor(survivors, dtype=torch.long),
            coefficients=coefficients,
            intercept=intercept,
            score=score,
        )
        column = self.inverse[keep_index, position]
        # the Schur downdate, in place on one copy without the row and column (same bits as the out-of-place formula)
        downdated = _without(self.inverse, position)
        downdated.sub_(torch.outer(column, column).div_(pivot))
        if self.weight is not None:  # the survivors' consumer columns absorb the eliminated one's
            moved = self.weight[position]
            self.weight = _without_row(self.weight, position).add_(coefficients[:, None] * moved[None, :])
        self.alive = survivors
        self.mean = self.mean[keep_index]
        self.variance = self.variance[keep_index]
        self.dead = self.dead[keep_index]
        self._rows = self._rows[keep_index]
        del self.inverse
        if score < _NEAR_EXACT and not bool(self.dead.all()):
            del downdated
            self._invert()
        elif self._symmetric:  # the downdate keeps an exactly symmetric inverse exactly symmetric
            self.inverse = downdated
        else:
            self.inverse = downdated.add_(downdated.T.clone()).div_(2)
            self._symmetric = True
        return elimination


def greedy_round(
    solvers: Sequence[DependenceSolver],
    tolerance: float,
    *,
    count_params: Callable[[Sequence[int]], int] | None = None,
    params_goal: int | None = None,
    params_floor: int | None = None,
    savings: Sequence[float] | None = None,
    min_neurons: int | Sequence[int] = 1,
) -> list[RoundRecord]:
    """One elimination round over several layers, most dependent neuron first across all of them.

    Eliminates while the lowest score is at most ``tolerance``, and also beyond it while
    ``count_params(alive counts) > params_goal`` (a size schedule); never below ``min_neurons`` per layer, and
    never once the count is at most ``params_floor`` (a final size target). Beyond the tolerance (forced by the
    size schedule) the next neuron is the one with the least score per parameter it frees (``savings[i]`` per
    neuron of layer ``i``; our design), so cheap layers are not emptied for little size.

    Returns:
        One record per solver (possibly empty), in solver order.
    """
    if (params_goal is not None or params_floor is not None) and count_params is None:
        raise ValueError("`params_goal` and `params_floor` need `count_params`.")
    records = [RoundRecord(i) for i in range(len(solvers))]
    floors = [min_neurons] * len(solvers) if isinstance(min_neurons, int) else list(min_neurons)
    bests = [s.best() if len(s.alive) > f else (math.inf, -1) for s, f in zip(solvers, floors, strict=True)]
    per_param = list(savings) if savings is not None else [1.0] * len(solvers)
    while solvers:
        layer = min(range(len(solvers)), key=lambda i: bests[i][0])
        score, position = bests[layer]
        if not math.isfinite(score):
            break
        size = count_params([len(s.alive) for s in solvers]) if count_params is not None else 0
        if params_floor is not None and size <= params_floor:
            break
        if score > tolerance:
            if not (params_goal is not None and size > params_goal):
                break
            layer = min(range(len(solvers)), key=lambda i: bests[i][0] / per_param[i])
            score, position = bests[layer]
        records[layer].eliminations.append(solvers[layer].eliminate(position))
        solver = solvers[layer]
        bests[layer] = solver.best() if len(solver.alive) > floors[layer] else (math.inf, -1)
    return records


def anneal_tolerance(start: float, end: float, rounds: int, schedule: str = "geometric") -> list[float]:
    """Tolerance of each round, relaxed from ``start`` to ``end``.

    Example:
        >>> [f"{t:.0e}" for t in anneal_tolerance(1e-6, 1e-2, 5)]
        ['1e-06', '1e-05', '1e-04', '1e-03', '1e-02']
        >>> [round(t, 3) for t in anneal_tolerance(0.0, 1.0, 3, "cosine")]
        [0.0, 0.5, 1.0]
    """
    if rounds < 1:
        raise ValueError(f"`rounds` must be >= 1, got {rounds!r}.")
    if rounds == 1:
        return [float(end)]
    fractions = [i / (rounds - 1) for i in range(rounds)]
    if schedule == "geometric":
        if start <= 0:
            raise ValueError("A geometric schedule needs a start tolerance > 0.")
        return [start * (end / start) ** f for f in fractions]
    if schedule == "linear":
        return [start + (end - start) * f for f in fractions]
    if schedule == "cosine":
        return [start + (end - start) * (1 - math.cos(math.pi * f)) / 2 for f in fractions]
    raise ValueError(f"`schedule` must be 'geometric', 'linear' or 'cosine', got {schedule!r}.")


# --------------------------------------------------------------------------------------------------------------------
# Applying eliminations
# --------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def consumer_columns(consumer: nn.Module, pair: LayerPair) -> torch.Tensor:
    """Each neuron's consumer columns flattened: ``[channels, out * spatial]`` (float64 copy)."""
    weight = _weight(consumer).detach()
    return weight.reshape(weight.shape[0], pair.channels, -1).transpose(0, 1).reshape(pair.channels, -1).double()


@torch.no_grad()
def redistribute_(consumer: nn.Module, pair: LayerPair, elimination: Elimination) -> None:
    """Move an eliminated neuron's consumer columns onto the survivors (and the intercept into the bias), in place.

    The eliminated neuron's columns are zeroed afterwards, so the neuron no longer contributes.
    """
    weight = _weight(consumer)
    view = weight.view(weight.shape[0], pair.channels, -1)  # [out, C, S]: a kernel/flatten block per neuron
    column = view[:, elimination.neuron, :].double()
    survivors = elimination.survivors.to(weight.device, torch.long)
    coefficients = elimination.coefficients.to(weight.device, torch.float64)
    update = view[:, survivors, :].double() + coefficients[None, :, None] * column[:, None, :]
    view[:, survivors, :] = update.to(weight.dtype)
    bias = _bias(consumer)
    if elimination.intercept != 0.0:
        if bias is None:
            raise ValueError(f"Consumer {pair.consumer} has no bias to take the intercept.")
        bias.copy_((bias.double() + elimination.intercept * column.sum(-1)).to(bias.dtype))
    view[:, elimination.neuron, :] = 0


def elimination_masks(
    module: nn.Module, pairs: Sequence[LayerPair], removed: Sequence[Sequence[int]]
) -> dict[str, torch.Tensor]:
    """0/1 masks of every parameter touched by the removed neurons (producer rows, norm entries, consumer columns).

    Returns:
        Parameter name -> 0/1 mask of its shape, for every parameter of a pair's producer, norms and consumer
        weight (a module that is one pair's consumer and the next pair's producer gets the product).
    """
    masks: dict[str, torch.Tensor] = {}
    params = dict(module.named_parameters())

    def multiply(name: str, mask: torch.Tensor) -> None:
        masks[name] = masks[name] * mask if name in masks else mask

    for pair, gone in zip(pairs, removed, strict=True):
        alive = torch.ones(pair.channels)
        alive[list(gone)] = 0.0
        for owner in (pair.producer, *pair.norms):
            for attr in ("weight", "bias"):
                name = f"{owner}.{attr}" if owner else attr
                if name in params:
                    shape = params[name].shape
                    multiply(name, alive.reshape(-1, *([1] * (len(shape) - 1))).expand(shape).to(params[name]))
        name = f"{pair.consumer}.weight"
        weight = params[name]
        column = alive.repeat_interleave(pair.spatial) if weight.dim() == 2 else alive
        multiply(name, column.reshape(1, -1, *([1] * (weight.dim() - 2))).expand(weight.shape).to(weight))
    return masks


def param_table(module: nn.Module, pairs: Sequence[LayerPair]) -> list[tuple[int, int | None, int | None]]:
    """Per parameter of the original ``module``: its size and the pairs that scale its rows and its columns."""
    rows: dict[str, int] = {}
    cols: dict[str, int] = {}
    for i, pair in enumerate(pairs):
        for owner in (pair.producer, *pair.norms):
            rows[owner] = i
        cols[pair.consumer] = i
    table: list[tuple[int, int | None, int | None]] = []
    for name, param in module.named_parameters():
        owner, _, attr = name.rpartition(".")
        table.append((param.numel(), rows.get(owner), cols.get(owner) if attr == "weight" else None))
    return table


def param_count(
    table: Sequence[tuple[int, int | None, int | None]], pairs: Sequence[LayerPair], alive_counts: Sequence[int]
) -> int:
    """Exact parameter count once only ``alive_counts[i]`` neurons of ``pairs[i]`` remain (see :func:`param_table`).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
        >>> pair = LayerPair("0", "2", (), 6, 1, True)
        >>> table = param_table(net, [pair])
        >>> param_count(table, [pair], [6]), param_count(table, [pair], [2])
        (51, 19)
    """
    total = 0
    for numel, row, col in table:
        count = numel
        for i in (row, col):
            if i is not None:
                count = count // pairs[i].channels * alive_counts[i]
        total += count
    return total


@torch.no_grad()
def shrink_(module: nn.Module, pairs: Sequence[LayerPair], removed: Sequence[Sequence[int]]) -> None:
    """Physically remove neurons: smaller producer, BatchNorm and consumer layers (torch-pruning's functions).

    ``removed[i]`` are original indices of ``pairs[i]``. Pairs sharing a module (a consumer that is the next
    pair's producer) are handled, because each call removes one dimension.
    """
    for pair, gone in zip(pairs, removed, strict=True):
        idxs = sorted(int(i) for i in gone)
        if not idxs:
            continue
        producer = module.get_submodule(pair.producer)
        _prune_out(producer, idxs)
        for norm in pair.norms:
            per_channel = module.get_submodule(norm)
            if isinstance(per_channel, nn.Conv2d):
                tp.prune_depthwise_conv_out_channels(per_channel, idxs)
            else:
                tp.prune_batchnorm_out_channels(per_channel, idxs)
        consumer = module.get_submodule(pair.consumer)
        columns = [c * pair.spatial + s for c in idxs for s in range(pair.spatial)]
        if isinstance(consumer, nn.Linear):
            tp.prune_linear_in_channels(consumer, columns)
        else:
            tp.prune_conv_in_channels(consumer, columns)


def kept_indices(
    module: nn.Module, pairs: Sequence[LayerPair], removed: Sequence[Sequence[int]]
) -> dict[str, list[tuple[int, torch.Tensor]]]:
    """What :func:`shrink_` keeps of each parameter: name -> ``(dim, kept indices)`` (call it before shrinking).

    An optimizer's per-parameter state (momentum, Adam's moments) is sliced with it, so it carries over the shrink.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> pair = LayerPair("0", "2", (), channels=4, spatial=1, intercept=True)
        >>> {n: [(d, i.tolist()) for d, i in v] for n, v in kept_indices(net, [pair], [[1]]).items()}
        {'0.weight': [(0, [0, 2, 3])], '0.bias': [(0, [0, 2, 3])], '2.weight': [(1, [0, 2, 3])]}
    """
    kept: dict[str, list[tuple[int, torch.Tensor]]] = {}

    def keep(layer_name: str, dim: int, size: int, gone: set[int], params: Sequence[str]) -> None:
        index = torch.tensor([i for i in range(size) if i not in gone], dtype=torch.long)
        layer = module.get_submodule(layer_name)
        for attr in params:
            if isinstance(getattr(layer, attr, None), nn.Parameter):
                kept.setdefault(f"{layer_name}.{attr}" if layer_name else attr, []).append((dim, index))

    for pair, gone in zip(pairs, removed, strict=True):
        idxs = {int(i) for i in gone}
        if not idxs:
            continue
        producer = module.get_submodule(pair.producer)
        keep(pair.producer, 0, _weight(producer).shape[0], idxs, ("weight", "bias"))
        for norm in pair.norms:
            keep(norm, 0, _weight(producer).shape[0], idxs, ("weight", "bias"))
        columns = {c * pair.spatial + s for c in idxs for s in range(pair.spatial)}
        keep(pair.consumer, 1, _weight(module.get_submodule(pair.consumer)).shape[1], columns, ("weight",))
    return kept


def _prune_out(layer: nn.Module, idxs: list[int]) -> None:
    if isinstance(layer, nn.Linear):
        tp.prune_linear_out_channels(layer, idxs)
    else:
        tp.prune_conv_out_channels(layer, idxs)


@torch.no_grad()
def replay_(
    module: nn.Module, pairs: Sequence[LayerPair], history: Iterable[RoundRecord], shrink: bool = True
) -> list[list[int]]:
    """Apply recorded eliminations to a model with the original shapes (redistribution, then masks or shrinking).

    Returns:
        The removed original indices per pair.
    """
    removed: list[list[int]] = [[] for _ in pairs]
    for record in history:
        pair = pairs[record.pair]
        consumer = module.get_submodule(pair.consumer)
        for elimination in record.eliminations:
            redistribute_(consumer, pair, elimination)
            removed[record.pair].append(elimination.neuron)
    if shrink:
        shrink_(module, pairs, removed)
    else:
        params = dict(module.named_parameters())
        for name, mask in elimination_masks(module, pairs, removed).items():
            params[name].mul_(mask)
    return removed


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
