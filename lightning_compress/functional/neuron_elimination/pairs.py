"""Layer pairs: the producers whose output channels reach exactly one consumer through channel-wise operations.

Found by tracing the network once with torch-pruning's dependency graph; residual additions, branches and grouped
convolutions couple channels and are left alone, with the reason.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from lightning_compress.functional.selection import frozen_parameters, tied_parameters

__all__ = [
    "CHANNELWISE_OPS",
    "CONSUMER_OPS",
    "LayerPair",
    "bias_of",
    "find_layer_pairs",
    "skipped_summary",
    "trainable_pairs",
    "weight_of",
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


def weight_of(module: nn.Module) -> torch.Tensor:
    """The layer's weight tensor (a ``TypeError`` for a module without one)."""
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor.")
    return weight


def bias_of(module: nn.Module) -> torch.Tensor | None:
    """The layer's bias tensor, ``None`` without one."""
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
    channels = weight_of(layer).shape[0]
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
    consumer_inputs = weight_of(consumer).shape[1]
    if consumer_inputs % channels:
        return f"consumer {module_names[consumer]} has {consumer_inputs} inputs for {channels} channels", None
    intercept = bias_of(consumer) is not None and not _zero_pads(consumer)
    pair = LayerPair(name, module_names[consumer], tuple(norms), channels, consumer_inputs // channels, intercept)
    return "", pair


def trainable_pairs(
    module: nn.Module, example: Any, layers: Sequence[str] | None = None
) -> tuple[list[LayerPair], dict[str, str]]:
    """:func:`find_layer_pairs`, less the pairs that touch a frozen or tied layer (with the reason in ``skipped``).

    Eliminating rewrites producer rows, norm entries and consumer columns: all of them must train, and none may be
    tied to another module (shrinking one name of a shared tensor would cut the tie).
    """
    pairs, skipped = find_layer_pairs(module, example, layers)
    frozen_layers = {name.rpartition(".")[0] for name in frozen_parameters(module)}
    tied_layers = {name.rpartition(".")[0] for name in tied_parameters(module)}
    pairs = [p for p in pairs if not ((frozen_layers | tied_layers) & {p.producer, p.consumer, *p.norms})]
    for layer in sorted(frozen_layers):
        skipped[layer] = "frozen (requires_grad=False): left alone, with the layers it pairs with"
    for layer in sorted(tied_layers - frozen_layers):
        skipped[layer] = "tied (its weight is shared with another module): left alone, with its pairs"
    return pairs, skipped


def skipped_summary(skipped: Mapping[str, str]) -> str:
    """Why layers were left alone, grouped by reason, at most four reasons (for a refusal's message).

    Examples:
        >>> skipped_summary({"fc1": "residual", "fc2": "residual"})
        '2 layer(s) residual (e.g. fc1)'
    """
    reasons: dict[str, list[str]] = {}
    for layer, reason in skipped.items():
        reasons.setdefault(reason.split(" (")[0] if reason.startswith("frozen") else reason, []).append(layer)
    return "; ".join(f"{len(layers)} layer(s) {why} (e.g. {layers[0]})" for why, layers in list(reasons.items())[:4])
