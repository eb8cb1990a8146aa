"""The file's length as a function of the weights: a differentiable estimate for training, and its hard version.

The sparse codecs (``sparse``, ``sparse_codebook``) spend, per tensor of ``n`` entries with ``k`` non-zeros, about
``n * H(k / n)`` bits on the support (positions as entropy-coded gaps reach the i.i.d. binary entropy within a few
percent) plus ``value_bits`` per non-zero (a codebook index under its histogram; WeightSharing's codebooks cost 2.5-3
bits on our nets). :func:`hard_bits` is that count; :func:`relaxed_bits` replaces ``k`` by a smooth count of the
non-zeros, ``sum(1 - exp(-(w / tau)^2))``, so its gradient is the marginal price of keeping each weight alive:
``log2((n - k) / k) + value_bits`` bits (what zeroing one more entry saves in the file) times the slope of the soft
indicator, largest for weights near ``tau`` and vanishing for large ones. That is a relaxed support penalty, priced
in bits by the coder that will write the file (our design; see ``docs/methods/rate-aware.md`` for what we measured
against a plain L1 term).

:func:`threshold_for_bits` is the global magnitude below which entries must be zeroed for the hard count to fit a
budget: how the callback turns a byte target into a support.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "add_rate_gradients",
    "binary_entropy_bits",
    "hard_bits",
    "relaxed_bits",
    "soft_nonzeros",
    "threshold_for_bits",
]

_EPS = 1e-9


def binary_entropy_bits(p: torch.Tensor) -> torch.Tensor:
    """``H(p)`` in bits, clamped away from 0 and 1 (differentiable).

    Examples:
        >>> float(binary_entropy_bits(torch.tensor(0.5)))
        1.0
    """
    p = p.clamp(_EPS, 1 - _EPS)
    return -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))


def soft_nonzeros(values: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
    """A smooth count of the non-zeros: ``sum(1 - exp(-(values / tau)^2))`` (exact zeros count 0, large values 1).

    Examples:
        >>> round(float(soft_nonzeros(torch.tensor([0.0, 0.01, 5.0]), 0.5)), 3)
        1.0
    """
    return (1 - torch.exp(-((values / tau) ** 2))).sum()


def _per_tensor(value_bits: float | Sequence[float], count: int) -> list[float]:
    if isinstance(value_bits, int | float):
        return [float(value_bits)] * count
    if len(value_bits) != count:
        raise ValueError(f"`value_bits` has {len(value_bits)} entries for {count} tensors.")
    return [float(v) for v in value_bits]


def _tau(w: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale`` x the mean magnitude of the non-zeros of ``w`` (detached)."""
    magnitude = w.detach().abs()
    return scale * magnitude.sum() / torch.count_nonzero(magnitude).clamp_min(1) + _EPS


def relaxed_bits(tensors: Sequence[torch.Tensor], value_bits: float | Sequence[float], scale: float) -> torch.Tensor:
    """Differentiable estimate of the bits the sparse codecs spend on ``tensors``.

    Exact zeros (pruned entries held at zero) count nothing and get no gradient; ``tau`` of each tensor is
    ``scale`` times the mean magnitude of its non-zeros.

    Args:
        tensors: the weights (with gradients).
        value_bits: bits per non-zero value (one number, or one per tensor).
        scale: ``tau`` of each tensor, as a fraction of the mean magnitude of its non-zeros.

    Examples:
        >>> w = torch.tensor([0.0, 0.0, 0.02, 1.0, -1.0], requires_grad=True)
        >>> bits = relaxed_bits([w], value_bits=3.0, scale=0.5)
        >>> bits.backward()
        >>> float(w.grad[2]) > 0 == float(w.grad[0])  # the small weight is pushed towards zero, zeros stay
        True
    """
    total = tensors[0].new_zeros(())
    for w, per_value in zip(tensors, _per_tensor(value_bits, len(tensors)), strict=True):
        n = w.numel()
        k = soft_nonzeros(w, _tau(w, scale))
        total = total + n * binary_entropy_bits(k / n) + k * per_value
    return total


@torch.no_grad()
def add_rate_gradients(
    tensors: Sequence[torch.Tensor], value_bits: float | Sequence[float], scale: float, weight: float
) -> torch.Tensor:
    """Add ``weight`` x the gradient of :func:`relaxed_bits` to each tensor's ``.grad``, in closed form.

    The gradient of the relaxed count is ``(log2((n - k) / k) + value_bits) * 2 w / tau^2 * exp(-(w / tau)^2)``
    (``tau`` held constant, as autograd sees it detached): one ``exp`` per entry, shared by the count and the
    gradient, instead of a graph of a dozen elementwise steps and its backward pass (2.7x faster on LeNet-300-100's
    tensors on one CPU thread). Everything stays on the tensors' device: no synchronisation.

    Returns:
        The estimate in bits (what :func:`relaxed_bits` returns), a 0-d tensor.

    Examples:
        >>> w = torch.tensor([0.0, 0.3, 3.0, -3.5])
        >>> w.grad = torch.zeros(4)
        >>> ref = w.clone().requires_grad_(True)
        >>> relaxed_bits([ref], 3.0, 0.5).backward()
        >>> bits = add_rate_gradients([w], 3.0, 0.5, weight=1.0)
        >>> torch.allclose(w.grad, ref.grad, atol=1e-6)
        True
    """
    total = tensors[0].new_zeros((), dtype=torch.float32)
    for w, per_value in zip(tensors, _per_tensor(value_bits, len(tensors)), strict=True):
        n = w.numel()
        tau = _tau(w, scale)
        decay = torch.div(w, tau).square_().neg_().exp_()  # exp(-(w/tau)^2); 1 at the held zeros
        k = n - decay.sum(dtype=torch.float32)
        p = (k / n).clamp(_EPS, 1 - _EPS)
        total += n * binary_entropy_bits(p) + k * per_value
        price = torch.log2((1 - p) / p) + per_value  # bits saved by zeroing one more entry
        gradient = decay.mul_(w).mul_((price * (2.0 * weight) / tau.square()).to(w.dtype))
        if w.grad is None:
            w.grad = gradient
        else:
            w.grad.add_(gradient)
    return total


def hard_bits(nonzeros: Sequence[int], numels: Sequence[int], value_bits: float | Sequence[float]) -> float:
    """The count :func:`relaxed_bits` relaxes: ``sum(n * H(k / n) + k * value_bits)``.

    Examples:
        >>> round(hard_bits([10], [1000], 3.0))
        111
    """
    bits = 0.0
    for k, n, per_value in zip(nonzeros, numels, _per_tensor(value_bits, len(numels)), strict=True):
        p = k / n if n else 0.0
        if 0 < p < 1:
            bits += n * -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
        bits += k * per_value
    return bits


def threshold_for_bits(
    magnitudes: Sequence[torch.Tensor], numels: Sequence[int], value_bits: float | Sequence[float], bits: float
) -> float:
    """The smallest global magnitude threshold ``t`` such that keeping only entries with ``|w| > t`` fits ``bits``.

    Args:
        magnitudes: per tensor, the magnitudes of its entries still alive.
        numels: per tensor, its number of entries (alive or not).
        value_bits: bits per non-zero value (one number, or one per tensor).
        bits: the budget of :func:`hard_bits`.

    Returns:
        The threshold (``-1`` when everything fits: nothing to prune).

    Examples:
        >>> mags = [torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0.05, 0.5])]
        >>> threshold_for_bits(mags, [4, 2], value_bits=0.0, bits=1e9)
        -1.0
        >>> t = threshold_for_bits(mags, [4, 2], value_bits=4.0, bits=9.0)  # only 0.5 fits: 2 + 4 bits
        >>> round(t, 3)
        0.4
    """
    counts = [int(m.numel()) for m in magnitudes]
    if hard_bits(counts, numels, value_bits) <= bits:
        return -1.0
    flat = torch.cat([m.reshape(-1).float().cpu() for m in magnitudes])
    owner = torch.cat([torch.full((int(m.numel()),), i, dtype=torch.int64) for i, m in enumerate(magnitudes)])
    order = torch.argsort(flat, descending=True, stable=True)
    sorted_mags, sorted_owner = flat[order], owner[order]
    # keep the `keep` largest: bisection on `keep` (the hard count grows with it)
    lo, hi = 0, int(flat.numel())  # fits with lo kept, not with hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        kept = torch.bincount(sorted_owner[:mid], minlength=len(magnitudes)).tolist()
        if hard_bits(kept, numels, value_bits) <= bits:
            lo = mid
        else:
            hi = mid
    return float(sorted_mags[lo]) if lo < flat.numel() else -1.0
