"""Ternary weights {-1, 0, +1} x scale (Gu et al. 2022/24, quantization-aware part), as pure functions.

A tensor is split by a threshold ``delta`` into -1, 0, +1 symbols; each output channel (or the whole tensor) gets
the scale that minimises the L2 error for its non-zeros (the mean magnitude of the kept weights, as in ternary
weight networks). The threshold follows a rule (``0.7 * mean|w|``) or hits a target sparsity. The forward pass of
quantization-aware training uses the ternary values; the backward pass is the straight-through estimator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import optimize, special

__all__ = [
    "GaussianMoments",
    "StepFunction",
    "Ternary",
    "channel_rows",
    "match_step_activation",
    "quadrature_moments",
    "relu_moments",
    "sparse_ternary",
    "step_moments",
    "ternarize",
    "ternary_count",
    "ternary_ste",
    "ternary_values",
]


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

    Examples:
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


def ternary_values(
    weight: torch.Tensor, *, rule: str = "twn", sparsity: float | None = None, per_channel: bool = True
) -> torch.Tensor:
    """``ternarize(weight, ...).values()``, bit for bit, in the few float passes a training step can afford.

    The keep mask is a float (``sign(relu(|w| - delta))``: exactly 1 where ``|w| > delta``, as ``a - b == 0`` only
    when ``a == b``) instead of a boolean, and no int8 symbols are built: boolean masks, ``where`` and the int8
    round trip made QAT's forward pass several times slower on a CPU (a microbenchmark, not a bench script).

    Examples:
        >>> w = torch.tensor([[0.9, -0.05, -1.1], [0.2, 0.0, -0.3]])
        >>> torch.equal(ternary_values(w), ternarize(w).values())
        True
    """
    if rule not in ("twn", "sparsity"):
        raise ValueError(f"`rule` must be 'twn' or 'sparsity', got {rule!r}.")
    rows = channel_rows(weight.detach().float(), per_channel)
    magnitude = rows.abs()
    if rule == "twn":
        delta = magnitude.mean(dim=1, keepdim=True).mul_(0.7)
    else:
        if sparsity is None or not 0.0 <= sparsity < 1.0:
            raise ValueError(f"`sparsity` must be in [0, 1) with rule='sparsity', got {sparsity!r}.")
        delta = torch.quantile(magnitude, float(sparsity), dim=1, keepdim=True)
    keep = torch.sub(magnitude, delta).relu_().sign_()
    scales = (magnitude * keep).sum(dim=1, keepdim=True).div_(keep.sum(dim=1, keepdim=True).clamp_(min=1))
    return rows.sign().mul_(keep).mul_(scales).reshape(weight.shape)


class _TernarySTE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: object, weight: torch.Tensor, rule: str, sparsity: float | None, per_channel: bool
    ) -> torch.Tensor:
        return ternary_values(weight, rule=rule, sparsity=sparsity, per_channel=per_channel).to(weight.dtype)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        return grad, None, None, None  # straight-through: d(ternary)/d(latent) taken as the identity


def ternary_ste(
    weight: torch.Tensor, rule: str = "twn", sparsity: float | None = None, per_channel: bool = True
) -> torch.Tensor:
    """Ternary values in the forward pass, identity gradient to the latent ``weight`` in the backward pass."""
    out: torch.Tensor = _TernarySTE.apply(weight, rule, sparsity, per_channel)
    return out


# -- NTK-LC (Gu et al.): Gaussian moments, step activations, moment matching, sparse ternary weights --------------

_SQRT_2PI = math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class GaussianMoments:
    """The moments of an activation ``sigma`` at input scale ``tau`` that fix the NTK (paper, via Stein's lemma).

    With ``xi ~ N(0, 1)``: ``d0 = E[sigma(tau xi)]``, ``a1 = E[sigma'(tau xi)]``, ``a2 = E[sigma''(tau xi)]``,
    ``alpha3 = E[((sigma - d0)^2)''(tau xi)]`` and ``variance = Var[sigma(tau xi)]`` (the next layer's ``tau^2``).
    Derivatives are taken in the Stein sense, so step functions have moments too.
    """

    d0: float
    a1: float
    a2: float
    alpha3: float
    variance: float

    def matched(self, with_variance: bool = False) -> np.ndarray:
        """The quantities the matching system equates: ``a1^2, a2^2, alpha3`` (and the variance for the last layer)."""
        values = [self.a1**2, self.a2**2, self.alpha3]
        return np.array([*values, self.variance] if with_variance else values)


def relu_moments(tau: float) -> GaussianMoments:
    """Closed-form :class:`GaussianMoments` of ReLU at scale ``tau``.

    Examples:
        >>> m = relu_moments(1.0)
        >>> round(m.d0, 6), m.a1, round(m.alpha3, 6)
        (0.398942, 0.5, 0.68169)
    """
    return GaussianMoments(
        d0=tau / _SQRT_2PI,
        a1=0.5,
        a2=1.0 / (_SQRT_2PI * tau),
        alpha3=1.0 - 1.0 / math.pi,
        variance=tau**2 * (0.5 - 0.5 / math.pi),
    )


def quadrature_moments(fn: Callable[[np.ndarray], np.ndarray], tau: float, order: int = 160) -> GaussianMoments:
    """:class:`GaussianMoments` of any element-wise ``fn`` by Gauss-Hermite quadrature (probabilists' weights).

    Accurate for smooth activations; ReLU converges slowly (kink) and steps badly, which is why those have closed
    forms (:func:`relu_moments`, :func:`step_moments`).

    Examples:
        >>> m = quadrature_moments(np.tanh, 1.0)
        >>> abs(m.d0) < 1e-12, abs(m.a2) < 1e-12, round(m.a1, 4)
        (True, True, 0.6057)
    """
    nodes, weights = np.polynomial.hermite_e.hermegauss(order)
    weights = weights / _SQRT_2PI
    values = np.asarray(fn(tau * nodes), dtype=np.float64)
    d0 = float(weights @ values)
    centred_sq = (values - d0) ** 2
    return GaussianMoments(
        d0=d0,
        a1=float(weights @ (nodes * values)) / tau,
        a2=float(weights @ ((nodes**2 - 1) * values)) / tau**2,
        alpha3=float(weights @ ((nodes**2 - 1) * centred_sq)) / tau**2,
        variance=float(weights @ centred_sq),
    )


@dataclass(frozen=True)
class StepFunction:
    """A piecewise-constant activation: ``levels[k]`` between ``thresholds[k-1]`` and ``thresholds[k]``.

    ``len(levels) == len(thresholds) + 1``; thresholds are non-decreasing. ``residual`` is the matching solver's
    final residual norm (0 for a hand-made step).
    """

    thresholds: tuple[float, ...]
    levels: tuple[float, ...]
    residual: float = 0.0

    def __call__(self, t: np.ndarray) -> np.ndarray:
        """Evaluate on an array."""
        index = np.searchsorted(np.asarray(self.thresholds), t, side="right")
        return np.asarray(self.levels)[index]


def step_moments(step: StepFunction, tau: float) -> GaussianMoments:
    """Closed-form :class:`GaussianMoments` of a :class:`StepFunction` at scale ``tau`` (erf/exp, no quadrature).

    On an interval ``(l, u)`` of ``xi``: ``E[1] = Phi(u) - Phi(l)``, ``E[xi 1] = phi(l) - phi(u)`` and
    ``E[(xi^2 - 1) 1] = l phi(l) - u phi(u)``.

    Examples:
        >>> m = step_moments(StepFunction((0.0,), (0.0, 1.0)), 1.0)  # Heaviside
        >>> round(m.d0, 6), round(m.a1, 6), round(m.a2, 6)
        (0.5, 0.398942, 0.0)
    """
    edges = np.concatenate(([-np.inf], np.asarray(step.thresholds, dtype=np.float64) / tau, [np.inf]))
    levels = np.asarray(step.levels, dtype=np.float64)
    finite = np.isfinite(edges)
    pdf, x_pdf = np.zeros_like(edges), np.zeros_like(edges)  # phi(x) and x phi(x) vanish at +-inf
    pdf[finite] = np.exp(-0.5 * edges[finite] ** 2) / _SQRT_2PI
    x_pdf[finite] = edges[finite] * pdf[finite]
    cdf = special.ndtr(edges)
    mass, first, second = np.diff(cdf), -np.diff(pdf), -np.diff(x_pdf)
    d0 = float(levels @ mass)
    centred = (levels - d0) ** 2
    return GaussianMoments(
        d0=d0,
        a1=float(levels @ first) / tau,
        a2=float(levels @ second) / tau**2,
        alpha3=float(centred @ second) / tau**2,
        variance=float(centred @ mass),
    )


def _hidden_step(params: np.ndarray, tau: float) -> StepFunction:
    s1, gap, b = params
    return StepFunction((s1 * tau, (s1 + gap) * tau), (b, 0.0, b))


def _last_step(params: np.ndarray, tau: float) -> StepFunction:
    s1, g1, g2, b1, b2 = params  # s2 = s1 + g1, s3 = s2 + g2, s4 = s3 + s2 - s1 (the authors' symmetry tie)
    s = np.array([s1, s1 + g1, s1 + g1 + g2, s1 + 2 * g1 + g2]) * tau
    return StepFunction(tuple(s.tolist()), (b1, 0.0, b2, 0.0, b1))


def _staircase_step(params: np.ndarray, tau: float) -> StepFunction:
    s1, gap, b1, b2 = params
    return StepFunction((s1 * tau, (s1 + gap) * tau), (0.0, b1, b1 + b2))


def match_step_activation(
    target: GaussianMoments,
    tau: float,
    *,
    last: bool = False,
    staircase: bool = False,
    target_tau: float | None = None,
    restarts: int = 100,
    seed: int = 0,
) -> StepFunction:
    """Solve the NTK-LC matching system for a step activation evaluated at the compressed net's scale ``tau``.

    Hidden layers: ``sigma(t) = b 1[t < s1] + b 1[t > s2]`` with unknowns ``(s1, s2, b)``, matching ``a1^2, a2^2,
    alpha3`` of ``target``. The last hidden layer: ``b (1[t < s1] + 1[t > s4]) + b 1[s2 < t < s3]`` with
    ``s4 = s3 + s2 - s1`` and two free amplitudes (levels ``b1, 0, b2, 0, b1``, as the authors' ``Binary_Last``),
    additionally matching the variance; the amplitudes start near the closed form ``sqrt(alpha3^2 / a2^2 +
    4 tau_L^2)`` of the original net (``tau_L = target_tau``). Least squares (scipy ``trf`` with the ordering
    as bounds) from ``restarts`` seeded starting points; the best is kept and its residual norm recorded. Among
    mirror-image solutions (``a1`` changes sign, the matched ``a1^2`` does not) the one with ``a1 > 0`` is
    returned, so the step rises like the activation it replaces.

    ``staircase=True`` (our design, for quantization-aware training): a rising three-value step ``0, b1, b1 + b2``
    with unknowns ``(s1, s2, b1, b2)`` fitted to all four quantities in the least-squares sense (for ReLU the best
    fit keeps a relative residual near 0.13); a closer stand-in for ReLU than the two-level form.

    Raises:
        ValueError: for ``restarts < 1``, ``tau <= 0`` or ``last=True`` without ``target_tau``.

    Examples:
        >>> step = match_step_activation(relu_moments(1.0), 1.0, restarts=5)
        >>> step.residual < 1e-9
        True
    """
    if restarts < 1:
        raise ValueError(f"`restarts` must be >= 1, got {restarts!r}.")
    if not tau > 0:
        raise ValueError(f"`tau` must be > 0, got {tau!r}.")
    if last and target_tau is None:
        raise ValueError("`target_tau` (the original net's scale after the last hidden layer) is required.")
    last = last or staircase  # the staircase matches the variance too
    wanted = target.matched(with_variance=last)
    weight = 1.0 / np.maximum(np.abs(wanted), 1e-12)  # relative residuals: the moments differ in magnitude
    amplitude = math.sqrt(target.alpha3**2 / target.a2**2 + 4 * (target_tau or 0.0) ** 2)

    def build(params: np.ndarray) -> StepFunction:
        if staircase:
            return _staircase_step(params, tau)
        return _last_step(params, tau) if last else _hidden_step(params, tau)

    def residuals(params: np.ndarray) -> np.ndarray:
        return (step_moments(build(params), tau).matched(with_variance=last) - wanted) * weight

    rng = np.random.default_rng(seed)
    lower = np.array([-np.inf, 0.0, 0.0, 1e-9, 1e-9]) if last else np.array([-np.inf, 0.0, 1e-9])
    if staircase:
        lower = np.array([-np.inf, 0.0, 0.0, 0.0])
    best: tuple[float, np.ndarray] | None = None
    for _ in range(restarts):
        # starting points over three scales: the last layer's solutions put thresholds far in the tails
        start = rng.standard_normal(lower.size) * rng.choice([0.3, 1.0, 3.0])
        start = np.where(np.isfinite(lower), np.abs(start) + 1e-3, start)
        if last and not staircase:
            start[3:] = amplitude * np.exp(0.5 * rng.standard_normal(2))  # near the authors' closed form
        fit = optimize.least_squares(residuals, start, bounds=(lower, np.inf), xtol=1e-15, ftol=1e-15, gtol=1e-15)
        score = float(np.linalg.norm(step_moments(build(fit.x), tau).matched(with_variance=last) - wanted))
        if best is None or score < best[0]:
            best = (score, fit.x)
        if score < 1e-12:
            break
    assert best is not None  # noqa: S101 - restarts >= 1
    step = build(best[1])
    if step_moments(step, tau).a1 < 0:  # mirror t -> -t: same even moments, a1 flips sign
        step = StepFunction(tuple(-s for s in reversed(step.thresholds)), tuple(reversed(step.levels)))
    return StepFunction(step.thresholds, step.levels, residual=best[0])


def ternary_count(numel: int, sparsity: float) -> int:
    """Number of ``+1`` (and of ``-1``) entries in an NTK-LC weight: ``round((1 - sparsity) / 2 * numel)``."""
    return round((1.0 - sparsity) / 2.0 * numel)


def sparse_ternary(shape: Sequence[int], sparsity: float, seed: int) -> torch.Tensor:
    """Random sparse ternary weights ``{0, +-1/sqrt(1 - sparsity)}`` with exactly balanced signs (NTK-LC).

    A random permutation of a vector holding :func:`ternary_count` ``+1`` and as many ``-1``; unit variance. The
    permutation comes from NumPy's legacy ``RandomState``, whose stream NumPy keeps stable across versions, so the
    ``seed`` alone reproduces the tensor anywhere (the codec's seed-only storage relies on it).

    Raises:
        ValueError: for a sparsity outside [0, 1).

    Examples:
        >>> w = sparse_ternary((4, 5), 0.5, seed=0)
        >>> int((w > 0).sum()), int((w < 0).sum()), round(float(w.abs().max()), 4)
        (5, 5, 1.4142)
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"`sparsity` must be in [0, 1), got {sparsity!r}.")
    numel = math.prod(shape)
    k = ternary_count(numel, sparsity)
    symbols = np.zeros(numel, dtype=np.float32)
    symbols[:k], symbols[k : 2 * k] = 1.0, -1.0
    permuted = np.random.RandomState(seed % 2**32).permutation(symbols)
    return torch.from_numpy(permuted / np.float32(math.sqrt(1.0 - sparsity))).reshape(tuple(shape))
