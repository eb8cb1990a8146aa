"""Learning-rate schedules the recipes use that torch does not ship as one scheduler."""

from __future__ import annotations

import math

import torch

__all__ = ["hold_then_cosine"]


def hold_then_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, hold_fraction: float = 0.8, final_factor: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Constant LR for the first ``hold_fraction`` of the fit, then a half cosine down to ``final_factor`` x LR.

    Made for compression recipes that change the weights until late in the fit (pruning stages end at 80% of the
    steps by default): they need a live LR while the structure changes and a decay while the final weights settle.
    :class:`~lightning_compress.ImageClassifier` passes ``total_steps`` itself (optimizer steps of the fit when
    its ``scheduler_interval`` is ``"step"``, epochs when ``"epoch"``).

    Args:
        optimizer: the optimizer whose LR is scheduled.
        total_steps: scheduler steps in the whole fit (>= 1).
        hold_fraction: fraction of ``total_steps`` at the full LR, in [0, 1].
        final_factor: LR multiplier reached at ``total_steps`` (the end of the fit), in [0, 1].

    Returns:
        A ``LambdaLR``.

    Examples:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> sched = hold_then_cosine(opt, total_steps=10, hold_fraction=0.5)
        >>> lrs = []
        >>> for _ in range(10):
        ...     lrs.append(round(opt.param_groups[0]["lr"], 3))
        ...     opt.step(); sched.step()
        >>> lrs
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.905, 0.655, 0.345, 0.095]
    """
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"`total_steps` must be an int >= 1, got {total_steps!r}.")
    if not 0.0 <= float(hold_fraction) <= 1.0:
        raise ValueError(f"`hold_fraction` must be in [0, 1], got {hold_fraction!r}.")
    if not 0.0 <= float(final_factor) <= 1.0:
        raise ValueError(f"`final_factor` must be in [0, 1], got {final_factor!r}.")
    hold = round(total_steps * float(hold_fraction))
    decay = max(total_steps - hold, 1)

    def factor(step: int) -> float:
        if step <= hold:
            return 1.0
        progress = min((step - hold) / decay, 1.0)
        return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
