"""Calibration statistics: the mean and second moment of every consumer's input over calibration rows, in float64.

For convolutions every spatial position is a row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from lightning_compress.functional.forward import call_forward, to_device
from lightning_compress.functional.neuron_elimination.pairs import LayerPair

__all__ = ["ActivationMoments", "collect_moments", "consumer_rows", "rows_shortfall"]


def consumer_rows(inputs: torch.Tensor, channels: int, linear: bool = False) -> torch.Tensor:
    """The consumer's input as observation rows ``[rows, channels]``.

    A Linear input ``[N, C]`` is already rows, ``[N, T, C]`` (a sequence, ``linear=True``) gives ``N*T`` rows; a
    flattened ``[N, C*S]`` gives ``N*S`` rows; a convolution input ``[N, C, H, W]`` gives ``N*H*W`` rows (every
    spatial position is an observation).

    Examples:
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

    Examples:
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

    Examples:
        >>> rows_shortfall("fc1", 3000, 300, 10) is None
        True
    """
    if rows >= min_rows_per_neuron * neurons:
        return None
    return (
        f"Layer {layer}: {rows} calibration rows for {neurons} neurons; at least `min_rows_per_neuron`="
        f"{min_rows_per_neuron} per neuron are needed (with too few rows every neuron looks dependent)."
    )
