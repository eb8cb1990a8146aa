"""The dependence solver: redundancy scores from the inverse covariance, greedy elimination with Schur downdates.

Also the tolerance schedule and the records a round produces.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["DependenceSolver", "Elimination", "RoundRecord", "anneal_tolerance", "greedy_round"]


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


def _unpack_rows(packed: torch.Tensor, n: int, rows: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix whose upper triangle :func:`_pack_upper` packed, at ``rows`` x ``rows`` (the same values).

    One gather: row ``i``'s entry ``j >= i`` sits at ``i * n - i * (i - 1) / 2 + (j - i)`` in the packed triangle.
    (A row-by-row unpacking of the whole matrix, then a gather of the rows, took half of MobileNetV2's first round:
    every near-exact elimination re-inverts from here.)

    Examples:
        >>> m = torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 5.0], [3.0, 5.0, 6.0]])
        >>> _unpack_rows(_pack_upper(m), 3, torch.tensor([0, 2])).tolist()
        [[1.0, 3.0], [3.0, 6.0]]
    """
    low = torch.minimum(rows[:, None], rows[None, :])
    high = torch.maximum(rows[:, None], rows[None, :])
    return packed[low * n - low * (low - 1) // 2 + (high - low)]


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

    Examples:
        >>> a = torch.randn(1000, 3, generator=torch.Generator().manual_seed(0))
        >>> a = torch.cat([a, a[:, :1] + 2 * a[:, 1:2] + 3], dim=1)  # neuron 3 = a0 + 2 a1 + 3
        >>> from lightning_compress.functional.neuron_elimination.moments import ActivationMoments
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
        return _unpack_rows(self._gram, self._size, self._rows)

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
        dead = bool(self.dead[position])
        device = self.inverse.device
        keep_index = torch.cat(
            [torch.arange(position, device=device), torch.arange(position + 1, len(self.alive), device=device)]
        )
        pivot = self.inverse[position, position].clone()  # not a view: the old inverse is freed below
        if dead:
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
        # a dead neuron's row and column of the Gram matrix are zero up to rounding: its downdate subtracts next to
        # nothing and cancels nothing, so only a near-exact dependence among live neurons re-inverts (MobileNetV2's
        # first round: 1,201 of its 3,368 eliminations were dead neurons, each re-inverted before)
        if score < _NEAR_EXACT and not dead and not bool(self.dead.all()):
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

    Examples:
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
