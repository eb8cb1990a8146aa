"""Today's vectorised SuRP refinement in NumPy, one full scan per round: the reference the torch version must equal.

Kept for the tests only (the library's :func:`lightning_compress.functional.successive_pruning.refine` is the torch
version with a candidate pool); the threshold mean is the plain NumPy mean, so the references' ``t0`` can differ
from the library's in the last bits: compare with the same ``t0`` (``alpha`` scaled) or compare decisions.
"""

from __future__ import annotations

import math

import numpy as np

from lightning_compress.functional.successive_pruning import SurpResult, _decay


def refine_full_scan(
    u: np.ndarray,
    *,
    target_sparsity: float | None = None,
    max_picks: int | None = None,
    alpha: float = 10.0,
    refresh: str = "ladder",
    ladder: float = 0.9,
    refine_steps: int = 0,
    support_tolerance: float = 0.0,
    t0: float | None = None,
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
    t = float(alpha * u[u > 0].mean()) if t0 is None else float(t0)
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
