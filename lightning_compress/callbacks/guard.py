"""The validation guard: a validation metric against its best, with a budget, and the undo it asks for.

A callback added with no arguments promises to cost at most about a point. It cannot know beforehand how far a
network takes its method, so it watches a validation metric: the first one logged whose name says what it is
(accuracy-like words first, then loss-like ones; ``max``/``min`` from the name), or the one named by ``monitor``.
After each validation the metric is compared with its best so far; a drop larger than the budget (1 point of an
accuracy; 2% of the best value of a loss, for the default guard) tells the callback to undo what it did since the
last validation and stop. :class:`MetricGuard` holds that logic and its state (plain data); :func:`guard_validation`
runs it for a callback that acts in counted steps (stages, cuts), with the snapshot it goes back to, and
:func:`require_validation` refuses a guard in a fit without validation, before the first step. RateAware judges
with :class:`MetricGuard`; SuccessivePruning and NeuronElimination with it when asked (``guard="validation"``).

The event guard, which judges a compression event itself on cached validation samples and is the default of
SuccessivePruning and NeuronElimination, is in :mod:`~lightning_compress.callbacks.event_guard`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn

from lightning_compress.callbacks.calibration import has_validation
from lightning_compress.callbacks.holds import Holds
from lightning_compress.callbacks.plan import should_skip

__all__ = [
    "DEFAULT_ACCURACY_BUDGET",
    "DEFAULT_LOSS_BUDGET",
    "Guarded",
    "MetricGuard",
    "find_monitor",
    "guard_validation",
    "mode_of",
    "require_validation",
]

#: The default guard's budget on an accuracy-like metric: 1 point.
DEFAULT_ACCURACY_BUDGET = 0.01
#: The default guard's budget on a loss-like metric, relative to its best value.
DEFAULT_LOSS_BUDGET = 0.02
MAX_WORDS = ("acc", "f1", "auc", "top", "iou", "precision", "recall", "score", "map", "bleu")
MIN_WORDS = ("loss", "err", "ppl", "perplexity", "mse", "mae", "nll")


def find_monitor(metrics: Mapping[str, Any]) -> str | None:
    """The validation metric a guard watches when none is named: accuracy-like names first, then loss-like ones.

    Examples:
        >>> find_monitor({"val_loss": 0.3, "val/acc": 0.9, "train_loss": 0.2})
        'val/acc'
    """
    names = sorted(k for k in metrics if "val" in k.lower())
    ranked = [n for n in names if any(w in n.lower() for w in MAX_WORDS)]
    ranked += [n for n in names if any(w in n.lower() for w in MIN_WORDS)]
    return ranked[0] if ranked else None


def mode_of(monitor: str) -> str:
    """``"min"`` for a loss-like name (and no accuracy-like word in it), else ``"max"``."""
    lowered = monitor.lower()
    loss_like = any(w in lowered for w in MIN_WORDS) and not any(w in lowered for w in MAX_WORDS)
    return "min" if loss_like else "max"


@dataclass
class MetricGuard:
    """A budget on a validation metric's drop from its best (see the module docstring).

    Attributes:
        owner: the callback's name (in messages).
        budget: the largest drop allowed (absolute; for the default guard on a loss, relative to the best).
        monitor: the metric's name (``None``: found at the first validation).
        mode: ``"max"`` or ``"min"`` (``None``: from the name).
        default: the callback's default guard (a loss then gets a relative budget).
        best: the best value seen, signed so that larger is better.

    Examples:
        >>> guard = MetricGuard("Demo", budget=0.01)
        >>> guard.resolve({"val_acc": 0.90})
        True
        >>> guard.judge({"val_acc": 0.90}), guard.judge({"val_acc": 0.885})
        ((False, 0.0), (True, 0.015...))
    """

    owner: str

    budget: float
    monitor: str | None = None
    mode: str | None = None
    default: bool = False
    best: float | None = None

    def resolve(self, metrics: Mapping[str, Any]) -> bool:
        """Find the metric in the first validation's ``metrics``; False when there is none to watch.

        Raises:
            ValueError: a named ``monitor`` was not logged (the message lists what was).
        """
        if self.monitor is not None:
            if self.monitor not in metrics:
                raise ValueError(
                    f"{self.owner}: `monitor`={self.monitor!r} was not logged in validation; logged metrics: "
                    f"{sorted(metrics)}. Pass one of them, or `monitor=None` to find one."
                )
        else:
            self.monitor = find_monitor(metrics)
            if self.monitor is None:
                return False
        if self.mode is None:
            self.mode = mode_of(self.monitor)
        return True

    @property
    def relative(self) -> bool:
        """Whether the budget is a share of the best value (the default guard on a loss-like metric)."""
        return self.default and self.mode == "min"

    def describe(self) -> str:
        """One line: what is watched, with which budget."""
        kind = f"{DEFAULT_LOSS_BUDGET:g} of its best, relative" if self.relative else f"{self.budget:g}"
        return f"{self.owner} guards {self.monitor!r} ({self.mode}) with a budget of {kind}"

    def summary(self) -> str:
        """In a few words, for the fit plan: what is watched, with which budget."""
        budget = f"{DEFAULT_LOSS_BUDGET:g} of best (loss)" if self.relative else f"{self.budget:g}"
        return f"{self.monitor or 'val metric (found by name)'}, drop <= {budget}"

    def allowed_drop(self) -> float:
        """The largest drop from the best allowed now (relative budgets scale with the best seen)."""
        if self.relative and self.best is not None:
            return DEFAULT_LOSS_BUDGET * abs(self.best)
        return self.budget

    def judge(self, metrics: Mapping[str, Any]) -> tuple[bool, float]:
        """(over budget, drop from the best) for this validation; the best moves up when within budget.

        Raises:
            ValueError: the monitored metric is no longer logged.
        """
        assert self.monitor is not None  # noqa: S101 - resolved at the first validation
        metric = metrics.get(self.monitor)
        if metric is None:
            raise ValueError(f"{self.owner}: `monitor`={self.monitor!r} is no longer logged in validation.")
        value = float(metric) if self.mode == "max" else -float(metric)
        if self.best is None:
            self.best = value
            return False, 0.0
        budget = self.allowed_drop()
        drop = self.best - value
        if drop > budget:
            return True, drop
        self.best = max(self.best, value)
        return False, max(drop, 0.0)

    def state_dict(self) -> dict[str, Any]:
        """Plain data, for checkpoints."""
        return {"monitor": self.monitor, "mode": self.mode, "best": self.best}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.monitor = state.get("monitor", self.monitor)
        self.mode = state.get("mode", self.mode)
        self.best = state.get("best", self.best)


class Guarded(Protocol):
    """What :func:`guard_validation` needs of a callback."""

    @property
    def owner(self) -> str:
        """The callback's name."""

    holds: Holds
    #: the validated state an undo goes back to (``position`` and what :meth:`Holds.take_snapshot` copied)
    guard_snapshot: dict[str, Any] | None

    def target_module(self, pl_module: nn.Module) -> nn.Module:
        """The module it compresses."""

    def log_figures(self, trainer: pl.Trainer, figures: Mapping[str, float]) -> None:
        """Record and log figures."""


def require_validation(
    owner: str, trainer: pl.Trainer, pl_module: nn.Module, guard: MetricGuard | None, what: str, instead: str
) -> None:
    """Refuse, before the first step, a guard (``guard`` not ``None``) in a fit without a validation loop.

    ``what`` says what the guard holds (e.g. "its sparsity"); ``instead`` the argument that goes unguarded.

    Raises:
        ValueError: naming the default guard or ``accuracy_budget=``, and what to pass instead.
    """
    if guard is None or should_skip(trainer) or has_validation(trainer, pl_module):
        return
    raise ValueError(
        f"{owner} guards {what} with a validation metric "
        f"({'the default, with no target given' if guard.default else 'accuracy_budget='}), and this fit has no "
        "validation loop (no `validation_step`, no validation data, or `limit_val_batches=0`). Pass validation "
        f"data to `fit`, or give {instead} unguarded."
    )


def guard_validation(
    callback: Guarded,
    trainer: pl.Trainer,
    guard: MetricGuard,
    position: int,
    unit: str,
    hint: str,
) -> tuple[str, int, bool] | None:
    """One validation under an accuracy guard, for a callback that acts in counted steps (stages, cuts).

    Finds the monitored metric at the first validation; then judges the drop from the best. Over budget, the
    snapshot of the last validation within budget is restored (every parameter of the compressed module, masks,
    statistics, and the optimizers' state of those parameters: the moments of the discarded path go too).
    Otherwise a snapshot is taken when ``position`` (steps done) moved since the last one.

    Returns:
        ``None`` to go on, or ``(reason, position to hold, warn)`` when the callback must stop: the metric is
        missing (``hint`` says what to give instead) or the last steps (``unit``) were undone.
    """
    if guard.monitor is None or guard.mode is None:
        if not guard.resolve(trainer.callback_metrics):
            found = sorted(trainer.callback_metrics)
            reason = (
                f"no validation metric to guard with was found among {found} (name one with `monitor=`, or give {hint})"
            )
            return reason, position, True
        rank_zero_info(guard.describe() + f": {unit}s since a validation that falls further are undone.")
    if should_skip(trainer):
        return None
    over, drop = guard.judge(trainer.callback_metrics)
    module = callback.target_module(trainer.lightning_module)
    snapshot = callback.guard_snapshot
    # with no step since the snapshot there is nothing to undo: a low validation then is the fit's, not a step's
    undoable = snapshot is not None and int(snapshot["position"]) != position
    if bool(trainer.strategy.broadcast(over, src=0)) and undoable:
        assert snapshot is not None  # noqa: S101 - undoable implies a snapshot
        restored = int(snapshot["position"])
        callback.holds.restore_snapshot(module, snapshot)
        _restore_optimizer_state(trainer, module, snapshot["optimizer"])
        callback.log_figures(trainer, {f"undone_{unit}s": float(position - restored)})
        reason = (
            f"{guard.monitor} fell {drop:.4g} below its best (over its budget): the last {position - restored} "
            f"{unit}(s) were undone"
        )
        return reason, restored, False
    if snapshot is None or int(snapshot["position"]) != position:
        # every parameter, not only the compressed ones: an undo must not leave the others on the discarded path
        everything = [name for name, _ in module.named_parameters()]
        callback.guard_snapshot = {
            "position": position,
            **callback.holds.take_snapshot(module, everything),
            "optimizer": _optimizer_state(trainer, module),
        }
    return None


def _optimizer_state(trainer: pl.Trainer, module: nn.Module) -> list[dict[int, dict[str, Any]]]:
    """Per optimizer: the state of each of ``module``'s parameters (by its index in the module), copied to the CPU."""
    index = {id(p): i for i, p in enumerate(module.parameters())}
    copies = []
    for optimizer in trainer.optimizers:
        copies.append(
            {
                index[id(p)]: {k: v.detach().to("cpu", copy=True) if torch.is_tensor(v) else v for k, v in st.items()}
                for p, st in optimizer.state.items()
                if id(p) in index
            }
        )
    return copies


@torch.no_grad()
def _restore_optimizer_state(trainer: pl.Trainer, module: nn.Module, copies: list[dict[int, dict[str, Any]]]) -> None:
    """Put back :func:`_optimizer_state`'s copies; a parameter that had no state then has none again."""
    params = list(module.parameters())
    for optimizer, saved in zip(trainer.optimizers, copies, strict=False):
        owned = {id(q) for group in optimizer.param_groups for q in group["params"]}
        for param in params:
            if id(param) in owned:
                optimizer.state.pop(param, None)
        for i, state in saved.items():
            device = params[i].device
            # Adam's "step" stays where the optimizer keeps it (the CPU unless capturable)
            optimizer.state[params[i]] = {
                k: (v.clone() if k == "step" else v.to(device, copy=True)) if torch.is_tensor(v) else v
                for k, v in state.items()
            }
