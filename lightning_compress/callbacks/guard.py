"""The accuracy guard a default compression callback keeps: a validation metric against its best, with a budget.

A callback added with no arguments promises to cost at most about a point. It cannot know beforehand how far a
network takes its method, so it watches a validation metric: the first one logged whose name says what it is
(accuracy-like words first, then loss-like ones; ``max``/``min`` from the name), or the one named by ``monitor``.
After each validation the metric is compared with its best so far; a drop larger than the budget (1 point of an
accuracy; 2% of the best value of a loss, for the default guard) tells the callback to undo what it did since the
last validation and stop. :class:`MetricGuard` holds that logic and its state (plain data); the callbacks keep
their own snapshots, since each knows which tensors it changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_ACCURACY_BUDGET", "DEFAULT_LOSS_BUDGET", "MetricGuard", "find_monitor", "mode_of"]

#: The default guard's budget on an accuracy-like metric: 1 point.
DEFAULT_ACCURACY_BUDGET = 0.01
#: The default guard's budget on a loss-like metric, relative to its best value.
DEFAULT_LOSS_BUDGET = 0.02
MAX_WORDS = ("acc", "f1", "auc", "top", "iou", "precision", "recall", "score", "map", "bleu")
MIN_WORDS = ("loss", "err", "ppl", "perplexity", "mse", "mae", "nll")


def find_monitor(metrics: Mapping[str, Any]) -> str | None:
    """The validation metric a guard watches when none is named: accuracy-like names first, then loss-like ones.

    Example:
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

    Example:
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
        budget = DEFAULT_LOSS_BUDGET * abs(self.best) if self.relative else self.budget
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
