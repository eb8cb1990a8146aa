"""Applying eliminations: redistribution onto the survivors, masks, parameter counts, and shrinking the layers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch_pruning as tp
from torch import nn

from lightning_compress.functional.neuron_elimination.pairs import LayerPair, bias_of, weight_of
from lightning_compress.functional.neuron_elimination.solver import Elimination, RoundRecord

__all__ = [
    "consumer_columns",
    "elimination_masks",
    "kept_indices",
    "param_count",
    "param_table",
    "redistribute_",
    "replay_",
    "shrink_",
]


@torch.no_grad()
def consumer_columns(consumer: nn.Module, pair: LayerPair) -> torch.Tensor:
    """Each neuron's consumer columns flattened: ``[channels, out * spatial]`` (float64 copy)."""
    weight = weight_of(consumer).detach()
    return weight.reshape(weight.shape[0], pair.channels, -1).transpose(0, 1).reshape(pair.channels, -1).double()


@torch.no_grad()
def redistribute_(consumer: nn.Module, pair: LayerPair, elimination: Elimination) -> None:
    """Move an eliminated neuron's consumer columns onto the survivors (and the intercept into the bias), in place.

    The eliminated neuron's columns are zeroed afterwards, so the neuron no longer contributes.
    """
    weight = weight_of(consumer)
    view = weight.view(weight.shape[0], pair.channels, -1)  # [out, C, S]: a kernel/flatten block per neuron
    column = view[:, elimination.neuron, :].double()
    survivors = elimination.survivors.to(weight.device, torch.long)
    coefficients = elimination.coefficients.to(weight.device, torch.float64)
    update = view[:, survivors, :].double() + coefficients[None, :, None] * column[:, None, :]
    view[:, survivors, :] = update.to(weight.dtype)
    bias = bias_of(consumer)
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

    Examples:
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

    Examples:
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
        keep(pair.producer, 0, weight_of(producer).shape[0], idxs, ("weight", "bias"))
        for norm in pair.norms:
            keep(norm, 0, weight_of(producer).shape[0], idxs, ("weight", "bias"))
        columns = {c * pair.spatial + s for c in idxs for s in range(pair.spatial)}
        keep(pair.consumer, 1, weight_of(module.get_submodule(pair.consumer)).shape[1], columns, ("weight",))
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
