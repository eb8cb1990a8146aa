"""Successive-refinement pruning (SuRP; Isik, No, Weissman 2021/22), as pure functions.

Every selected tensor is divided by its L2 norm; the magnitudes form one vector ``u`` of length ``n``. A residual
``r = u`` and a reconstruction ``û = 0`` are refined: all positions whose residual exceeds the threshold ``t`` get
the quantum ``t`` (``û += t``, ``r -= t``) and the threshold decays by ``(1 - 1/n)`` per pick. When no residual
exceeds ``t`` the threshold is *refreshed*. The initial threshold is ``alpha`` times the mean of the non-zero
magnitudes (as in the authors' iterative mode). Refinement stops when the reconstruction's sparsity reaches the target
(or the bit budget is spent). Positions never picked stay exactly zero: that is the pruning. The decoder replays
the thresholds from what the bitstream carries, so the reconstruction is bit-exact.

Refresh rules:

* ``"ladder"`` (our design, default): ``t <- t * ladder`` until some residual exceeds it; only the number of steps
  is transmitted (a few bits), because the decoder cannot compute the paper's rule.
* ``"mean"`` (the authors' code): ``t <- alpha * mean(non-zero residual)``, ``alpha <- 0.9 * alpha`` every 20
  refreshes; every refreshed threshold is transmitted as a float64.

:func:`refine_reference` is the authors' one-pick-per-iteration loop (random candidate), kept for tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["SurpResult", "reconstruct", "refine", "refine_reference", "sparsity_schedule"]


@dataclass
class SurpResult:
    """What the encoder produced: the reconstruction and everything the decoder needs to replay it.

    Attributes:
        n: number of magnitudes.
        t0: initial threshold (``alpha * mean(u)``).
        refresh: ``"ladder"`` or ``"mean"``.
        ladder: the ladder factor (``"ladder"`` refresh).
        rounds: positions picked in each round (ascending int64 arrays).
        refresh_steps: per round, ladder steps taken before it (``"ladder"``).
        refresh_values: per round, the refreshed threshold or NaN if none (``"mean"``).
        recon: the reconstructed magnitudes ``û`` (float64).
    """

    n: int
    t0: float
    refresh: str
    ladder: float
    rounds: list[np.ndarray] = field(default_factory=list)
    refresh_steps: list[int] = field(default_factory=list)
    refresh_values: list[float] = field(default_factory=list)
    recon: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def nonzeros(self) -> int:
        """Non-zero positions of the reconstruction."""
        return int(np.count_nonzero(self.recon))

    @property
    def sparsity(self) -> float:
        """Fraction of zeros in the reconstruction."""
        return 1.0 - self.nonzeros / self.n

    @property
    def picks(self) -> int:
        """Quanta added in total."""
        return int(sum(len(r) for r in self.rounds))


def _decay(t: float, picks: int, n: int) -> float:
    # Same float64 expression in encoder and decoder: the replay is bit-exact.
    return t * (1.0 - 1.0 / n) ** picks


def refine(
    u: np.ndarray,
    *,
    target_sparsity: float | None = None,
    max_picks: int | None = None,
    alpha: float = 10.0,
    refresh: str = "ladder",
    ladder: float = 0.9,
    refine_steps: int = 0,
    support_tolerance: float = 0.0,
) -> SurpResult:
    """Vectorised SuRP: every candidate above the threshold is refined in one round.

    Args:
        u: non-negative magnitudes (float64), already normalised per tensor.
        target_sparsity: stop as soon as the reconstruction's sparsity is at most this.
        max_picks: stop after this many quanta (a bit budget, roughly).
        alpha: initial threshold factor, ``t0 = alpha * mean(u[u > 0])`` (paper: 10 for ResNet-20, 13 for VGG-16).
        refresh: ``"ladder"`` (our design) or ``"mean"`` (the authors' rule).
        ladder: threshold factor per ladder step.
        refine_steps: after the target is reached, further ladder refreshes that refine only the already
            non-zero positions (spend bits on precision instead of support; 0 = stop at the target as the paper).
        support_tolerance: stop at the first round whose support holds at least ``(1 - support_tolerance)`` of the
            target's non-zeros (our design). Re-encoding a network that is already at the target must otherwise
            reach its tiniest survivors, and the many rounds that takes refine every other position far beyond any
            useful precision. 0 = stop exactly at the target.

    Returns:
        The :class:`SurpResult` (reconstruction and decoder side information).

    Raises:
        ValueError: for invalid arguments.

    Example:
        >>> import numpy as np
        >>> u = np.abs(np.random.default_rng(0).laplace(size=1000))
        >>> res = refine(u, target_sparsity=0.9)
        >>> res.sparsity <= 0.9, np.array_equal(reconstruct(res), res.recon)
        (True, True)
    """
    if target_sparsity is None and max_picks is None:
        raise ValueError("Give `target_sparsity` or `max_picks`.")
    if refresh not in ("ladder", "mean"):
        raise ValueError(f"`refresh` must be 'ladder' or 'mean', got {refresh!r}.")
    if not 0.0 < ladder < 1.0:
        raise ValueError(f"`ladder` must be in (0, 1), got {ladder!r}.")
    if not 0.0 <= support_tolerance < 1.0:
        raise ValueError(f"`support_tolerance` must be in [0, 1), got {support_tolerance!r}.")
    u = np.asarray(u, dtype=np.float64)
    n = u.size
    r = u.copy()
    recon = np.zeros(n)
    if not np.any(u > 0):
        result = SurpResult(n=n, t0=0.0, refresh=refresh, ladder=ladder)
        result.recon = recon
        return result
    # Mean over the non-zero magnitudes (the authors' iterative mode): on an already pruned network the zeros
    # would otherwise shrink the threshold and every survivor would be refined in many tiny quanta.
    t = float(alpha * u[u > 0].mean())
    result = SurpResult(n=n, t0=t, refresh=refresh, ladder=ladder)
    refresh_count = 0
    cur_alpha = alpha
    nonzero = 0
    # (1 - s) * n carries float error (0.05 * 5000 = 250.00000000000003): round it first
    target_nonzero = math.inf if target_sparsity is None else math.ceil(round((1.0 - target_sparsity) * n, 6))
    # a vector already sparser than the target can only keep its own non-zeros (else the rounds never end)
    target_nonzero = min(target_nonzero, int(np.count_nonzero(u)))
    enough_nonzero = (
        target_nonzero if math.isinf(target_nonzero) else math.ceil(round((1 - support_tolerance) * target_nonzero, 6))
    )
    picks = 0
    extra = -1  # ladder refreshes left after the target (-1: target not reached yet)
    support: np.ndarray | None = None
    while True:
        steps, value = 0, math.nan
        cand = np.flatnonzero(r > t) if support is None else support[r[support] > t]
        while cand.size == 0:
            if extra == 0 or (support is not None and not np.any(r[support] > 0)):
                result.recon = recon
                return result
            if extra > 0:
                extra -= 1
            refresh_count += 1
            if refresh == "ladder":
                t *= ladder
                steps += 1
            else:
                if refresh_count % 20 == 0:
                    cur_alpha *= 0.9
                t = float(cur_alpha * r[r > 0].mean())
                value = t
            cand = np.flatnonzero(r > t) if support is None else support[r[support] > t]
        if max_picks is not None and picks + cand.size > max_picks:
            cand = cand[: max_picks - picks]
        fresh = recon[cand] == 0
        if nonzero + int(fresh.sum()) > target_nonzero:
            # the last round may not overshoot the target: keep refinements, and the largest new residuals only
            allowed = max(int(target_nonzero) - nonzero, 0)
            new_pos = cand[fresh]
            keep_new = new_pos[np.argsort(-r[new_pos], kind="stable")[:allowed]]
            cand = np.sort(np.concatenate([cand[~fresh], keep_new]))
        result.rounds.append(cand.astype(np.int64))
        result.refresh_steps.append(steps)
        result.refresh_values.append(value)
        new = int(np.count_nonzero(recon[cand] == 0))
        recon[cand] += t
        r[cand] -= t
        picks += cand.size
        nonzero += new
        t = _decay(t, cand.size, n)
        if max_picks is not None and picks >= max_picks:
            break
        if extra < 0 and nonzero >= enough_nonzero:
            if refine_steps <= 0:
                break
            extra = refine_steps
            support = np.flatnonzero(recon)
    result.recon = recon
    return result


def reconstruct(result: SurpResult) -> np.ndarray:
    """Decoder: replay the thresholds and picks; returns ``û`` bit-exactly equal to the encoder's."""
    recon = np.zeros(result.n)
    t = result.t0
    for positions, steps, value in zip(result.rounds, result.refresh_steps, result.refresh_values, strict=True):
        if result.refresh == "ladder":
            for _ in range(steps):
                t *= result.ladder
        elif not math.isnan(value):
            t = value
        recon[positions] += t
        t = _decay(t, len(positions), result.n)
    return recon


def refine_reference(
    u: np.ndarray, target_sparsity: float, alpha: float = 10.0, seed: int = 0, max_iterations: int = 10_000_000
) -> np.ndarray:
    """The authors' loop, one random candidate per iteration (O(n) per pick; for tests on small tensors).

    Refresh as in their iterative mode: ``t = alpha * mean(non-zero residual)``, ``alpha *= 0.9`` every 20
    refreshes. Returns ``û``.
    """
    rng = np.random.default_rng(seed)
    u = np.asarray(u, dtype=np.float64)
    n = u.size
    r, recon = u.copy(), np.zeros(n)
    t = alpha * u[u > 0].mean()
    refresh_count = 0
    for _ in range(max_iterations):
        if 1.0 - np.count_nonzero(recon) / n <= target_sparsity:
            break
        cand = np.flatnonzero(r > t)
        while cand.size == 0:
            refresh_count += 1
            if refresh_count % 20 == 0:
                alpha *= 0.9
            t = alpha * r[r > 0].mean()
            cand = np.flatnonzero(r > t)
        m = rng.choice(cand)
        recon[m] += t
        r[m] -= t
        t *= 1.0 - 1.0 / n
    return recon


def sparsity_schedule(target: float, decay: float = 0.8) -> list[float]:
    """Stage sparsities ``1 - decay**k`` below the target, then the target itself (the paper's list).

    Example:
        >>> [round(s, 3) for s in sparsity_schedule(0.6)]
        [0.2, 0.36, 0.488, 0.59, 0.6]
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"target sparsity must be in (0, 1), got {target!r}.")
    stages: list[float] = []
    k = 1
    while (s := 1.0 - decay**k) < target - 1e-9:
        stages.append(s)
        k += 1
    return [*stages, target]


def normalise(tensors: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Concatenate ``tensor / ||tensor||``: returns magnitudes, signs (-1, 0, +1) and the norms."""
    norms = [float(np.linalg.norm(t)) for t in tensors]
    flat = np.concatenate([t.reshape(-1) / (nrm if nrm > 0 else 1.0) for t, nrm in zip(tensors, norms, strict=True)])
    return np.abs(flat), np.sign(flat), norms
