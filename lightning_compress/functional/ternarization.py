"""Ternary weights {-1, 0, +1} x scale (Gu et al. 2022/24, quantization-aware part), as pure functions.

A tensor is split by a threshold ``delta`` into -1, 0, +1 symbols; each output channel (or the whole tensor) gets
the scale that minimises the L2 error for its non-zeros (the mean magnitude of the kept weights, as in ternary
weight networks). The threshold follows a rule (``0.7 * mean|w|``) or hits a target sparsity. The forward pass of
quantization-aware training uses the ternary values; the backward pass is the straight-through estimator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Ternary", "channel_rows", "ternarize", "ternary_ste"]


@dataclass(frozen=True)
class Ternary:
    """A ternarised tensor: ``symbols`` in {-1, 0, +1} (int8) and one ``scale`` per channel (or one in total)."""

    symbols: torch.Tensor
    scales: torch.Tensor
    per_channel: bool

    def values(self) -> torch.Tensor:
        """``symbols * scale`` in float32, shaped like the original tensor."""
        scales = self.scales.reshape(-1, *([1] * (self.symbols.dim() - 1))) if self.per_channel else self.scales
        return self.symbols.float() * scales


def channel_rows(tensor: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """The tensor as ``(rows, -1)``: one row per output channel, or a single row (per-tensor scale, or 1-D)."""
    return tensor.reshape(tensor.shape[0], -1) if per_channel and tensor.dim() > 1 else tensor.reshape(1, -1)


def ternarize(
    weight: torch.Tensor, *, rule: str = "twn", sparsity: float | None = None, per_channel: bool = True
) -> Ternary:
    """Ternarise ``weight``.

    Args:
        weight: the latent fp32 tensor (dimension 0 = output channels).
        rule: ``"twn"`` (threshold ``0.7 * mean|w|``, ternary weight networks) or ``"sparsity"``.
        sparsity: with ``rule="sparsity"``, the fraction of zeros to reach (the threshold is that quantile of |w|).
        per_channel: one scale per output channel (and thresholds per channel) instead of one per tensor.

    Raises:
        ValueError: for an unknown rule or a missing/invalid sparsity.

    Example:
        >>> import torch
        >>> t = ternarize(torch.tensor([[0.9, -0.05, -1.1], [0.2, 0.0, -0.3]]))
        >>> t.symbols.tolist(), [round(s, 2) for s in t.scales.tolist()]
        ([[1, 0, -1], [1, 0, -1]], [1.0, 0.25])
    """
    if rule not in ("twn", "sparsity"):
        raise ValueError(f"`rule` must be 'twn' or 'sparsity', got {rule!r}.")
    if rule == "sparsity" and (sparsity is None or not 0.0 <= sparsity < 1.0):
        raise ValueError(f"`sparsity` must be in [0, 1) with rule='sparsity', got {sparsity!r}.")
    w = weight.detach().float()
    rows = channel_rows(w, per_channel)
    magnitude = rows.abs()
    if rule == "twn":
        delta = 0.7 * magnitude.mean(dim=1, keepdim=True)
    else:
        delta = torch.quantile(magnitude, float(sparsity or 0.0), dim=1, keepdim=True)
    keep = magnitude > delta
    symbols = torch.sign(rows) * keep
    kept = keep.sum(dim=1).clamp(min=1)
    scales = (magnitude * keep).sum(dim=1) / kept
    return Ternary(symbols.to(torch.int8).reshape(w.shape), scales, per_channel and w.dim() > 1)


class _TernarySTE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: object, weight: torch.Tensor, rule: str, sparsity: float | None, per_channel: bool
    ) -> torch.Tensor:
        return ternarize(weight, rule=rule, sparsity=sparsity, per_channel=per_channel).values().to(weight.dtype)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        return grad, None, None, None  # straight-through: d(ternary)/d(latent) taken as the identity


def ternary_ste(
    weight: torch.Tensor, rule: str = "twn", sparsity: float | None = None, per_channel: bool = True
) -> torch.Tensor:
    """Ternary values in the forward pass, identity gradient to the latent ``weight`` in the backward pass."""
    out: torch.Tensor = _TernarySTE.apply(weight, rule, sparsity, per_channel)
    return out
