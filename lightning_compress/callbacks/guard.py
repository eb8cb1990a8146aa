"""The accuracy guard a default compression callback keeps: a validation metric against its best, with a budget.

A callback added with no arguments promises to cost at most about a point. It cannot know beforehand how far a
network takes its method, so it watches a validation metric: the first one logged whose name says what it is
(accuracy-like words first, then loss-like ones; ``max``/``min`` from the name), or the one named by ``monitor``.
After each validation the metric is compared with its best so far; a drop larger than the budget (1 point of an
accuracy; 2% of the best value of a loss, for the default guard) tells the callback to undo what it did since the
last validation and stop. :class:`MetricGuard` holds that logic and its state (plain data); :func:`guard_validation`
runs it for a callback that acts in counted steps (stages, cuts), with the snapshot it goes back to, and
:func:`require_validation` refuses a guard in a fit without validation, before the first step. RateAware judges
with :class:`MetricGuard`; SuccessivePruning and NeuronElimination with it when asked (``guard="validation"``).

:class:`EventGuard` judges a compression event itself: the model right before it against right after it, on the
same cached validation samples. It is the default guard of SuccessivePruning (stages) and NeuronElimination
(rounds), and RateAware's cuts with ``guard="event"``; :func:`back_off` is the bisection they share.

Over 450 lines: the two guards share this room, with the back-off the event guard's callbacks share, while RateAware
keeps the validation guard (its rate term's cost is not an event's) and the others offer it as an option.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn

from lightning_compress.callbacks.calibration import as_the_fit_sees, has_validation, own_loader
from lightning_compress.callbacks.holds import Holds
from lightning_compress.callbacks.plan import should_skip
from lightning_compress.callbacks.validation import ValidationScorer, validation_loader
from lightning_compress.functional.forward import ForwardInputs, call_forward, to_device

__all__ = [
    "DEFAULT_ACCURACY_BUDGET",
    "DEFAULT_LOSS_BUDGET",
    "EVENT_SAMPLES",
    "RECOVERY_CREDIT",
    "BackOff",
    "EventCost",
    "EventGuard",
    "Guarded",
    "MetricGuard",
    "back_off",
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


#: The share of what the model wins back between two events credited against their cost (see ``EventGuard.begin``).
RECOVERY_CREDIT = 0.5
#: Validation samples the event guard caches: the paired comparison's standard error is about
#: ``sqrt(flips) / samples``, a few tenths of a point at 2,048 (see :class:`EventGuard`).
EVENT_SAMPLES = 2048


@dataclass(frozen=True)
class EventCost:
    """What one compression event cost on the guard's samples.

    Attributes:
        drop: the share of samples right before the event and wrong after it, less the reverse (a paired difference
            of the measure, in [-1, 1]).
        se: its standard error (the paired differences' standard deviation over the square root of their count).
        within: whether ``drop + z * se`` is within the budget.
    """

    drop: float
    se: float
    within: bool

    def __str__(self) -> str:
        return f"{100 * self.drop:.2f} ± {100 * self.se:.2f} pt"


class EventGuard:
    """Judges a compression event itself: the model right before it against the model right after it.

    Both are scored on the same cached validation samples (read from the validation data given to ``fit``, whatever
    the fit's validation schedule), so the comparison is paired: the fit's drift and the noise of two different
    validations do not enter it, and what noise is left (samples that flip) is its standard error. An event is
    within budget when its drop plus ``z`` standard errors is at most what is left of ``budget`` (the budget less
    the accepted events' costs: all events together may cost what one may alone; the training between them can only
    give some back).

    The measure is top-1 accuracy when the validation batches are ``(inputs, targets)`` and the model returns one row
    of class scores per target; otherwise it is label-free: agreement of the top-1 class with the model's own before
    the first event.

    Args:
        owner: the callback's name (in messages).
        budget: the largest drop an event may cost (1 point: 0.01).
        samples: validation samples cached (at most).
        z: standard errors added to the drop before it is compared with the budget.
        credit: the share of what the model wins back between two events that is credited against what they
            spent (0: every event's cost counts for good).
        charge_drift: count what the model loses between two events as spent, in full (for a method that changes
            the weights between its events too: RateAware's rate term).

    Examples:
        >>> guard = EventGuard("Demo", budget=0.01)
        >>> before = torch.tensor([True] * 95 + [False] * 5)
        >>> after = before.clone(); after[:3] = False
        >>> cost = guard.judge(before, after)
        >>> round(cost.drop, 3), cost.within
        (0.03, False)
    """

    def __init__(
        self,
        owner: str,
        budget: float = DEFAULT_ACCURACY_BUDGET,
        samples: int = EVENT_SAMPLES,
        z: float = 1.0,
        credit: float = RECOVERY_CREDIT,
        charge_drift: bool = False,
    ) -> None:
        self.owner, self.budget, self.z = owner, float(budget), float(z)
        self.scorer = ValidationScorer(owner, "accuracy", samples)
        self.measure: str | None = None
        #: what the accepted events of this fit cost together, less the credited recovery between them
        self.spent = 0.0
        self.credit = float(credit)
        self.charge_drift = bool(charge_drift)
        self._before_measure = 0.0
        self._after_measure: float | None = None
        self._batches: list[tuple[Any, torch.Tensor]] = []
        self._reference: list[torch.Tensor] | None = None

    @property
    def ready(self) -> bool:
        """Whether the samples are cached."""
        return self.measure is not None

    def prepare(self, trainer: pl.Trainer, model: nn.Module, to_inputs: ForwardInputs) -> None:
        """Cache the validation samples (once per fit) and choose the measure; label-free needs ``model`` as it is.

        Raises:
            RuntimeError: the fit has no validation data to cache.
        """
        if self.ready:
            return
        device = next(model.parameters()).device
        try:
            self._batches = self.scorer.batches(trainer, model, to_inputs, device)
            if self._batches:
                self.scorer.probe(model, *self._batches[0])
            self.measure = "accuracy"
        except TypeError:  # no (inputs, targets) of a classifier: judge agreement with the model's own predictions
            self._batches, self._reference = self._inputs_only(trainer, model, to_inputs, device)
            self.measure = "agreement"
        if not self._batches:
            raise RuntimeError(f"{self.owner}: the validation data given to `fit` holds no samples to judge with.")
        rank_zero_info(f"{self.owner}: {self.describe()}.")

    @torch.no_grad()
    def _inputs_only(
        self, trainer: pl.Trainer, model: nn.Module, to_inputs: ForwardInputs, device: torch.device
    ) -> tuple[list[tuple[Any, torch.Tensor]], list[torch.Tensor]]:
        """Validation inputs without labels, up to the sample cap, and the model's top-1 class on each row.

        The batches' targets are placeholders (one per row), for the scorer's batch format.
        """
        cap = self.scorer.max_samples if isinstance(self.scorer.max_samples, int) else None
        batches: list[tuple[Any, torch.Tensor]] = []
        reference: list[torch.Tensor] = []
        seen = 0
        was_training = model.training
        model.eval()
        try:
            for batch in map(partial(as_the_fit_sees, trainer), own_loader(validation_loader(trainer) or [])):
                x = to_device(to_inputs(batch), device)
                rows = call_forward(model, x)
                rows = rows.reshape(-1, rows.shape[-1]) if rows.dim() >= 2 else rows.reshape(-1, 1)
                batches.append((x, torch.zeros(len(rows))))
                reference.append(rows.argmax(dim=1))
                seen += len(rows)
                if cap is not None and seen >= cap:
                    break
        finally:
            model.train(was_training)
        return batches, reference

    def describe(self) -> str:
        """One line: what the guard measures, on how many samples, with which budget."""
        what = (
            "top-1 accuracy"
            if self.measure == "accuracy"
            else "top-1 agreement with the model before its first event (no labels to score with)"
        )
        samples = sum(len(y) for _, y in self._batches)
        return (
            f"each compression event is judged by its own cost in {what} on {samples:,} cached validation samples, "
            f"the model right before it against right after it: all events together within {100 * self.budget:g} pt, "
            "each with one standard error included"
        )

    def outcomes(self, model: nn.Module) -> torch.Tensor:
        """Per cached sample: whether ``model`` as it is now gets it right (or agrees with the reference)."""
        outputs = self.scorer.outputs(model, self._batches)
        if self.measure == "accuracy":
            truth = [y.reshape(-1) for _, y in self._batches]
        else:
            assert self._reference is not None  # noqa: S101 - set with the label-free measure
            truth = self._reference
        return torch.cat([(o.argmax(dim=1) == t.to(o.device)).cpu() for o, t in zip(outputs, truth, strict=True)])

    @property
    def allowance(self) -> float:
        """What the next event may cost: the budget less what the accepted events cost together."""
        return self.budget - self.spent

    def judge(self, before: torch.Tensor, after: torch.Tensor) -> EventCost:
        """The cost of an event from the outcomes before and after it (paired), against :attr:`allowance`."""
        diff = before.to(torch.float64) - after.to(torch.float64)
        n = diff.numel()
        drop = float(diff.mean()) if n else 0.0
        se = float(diff.std(unbiased=True)) / math.sqrt(n) if n > 1 else 0.0
        return EventCost(drop, se, drop + self.z * se <= self.allowance)

    def begin(self, before: torch.Tensor) -> None:
        """Start judging an event from the model's outcomes right before it.

        What the model won back since the last event (its measure now against right after that event, on the same
        samples) is credited against what the events spent, at :attr:`credit` of its size: the training between
        two events repairs part of the damage, and part of what it wins is progress the uncompressed model would
        have made as well (our design; see ``docs/defaults.md``).
        """
        self._before_measure = float(before.to(torch.float64).mean())
        if self._after_measure is not None:
            moved = self._before_measure - self._after_measure
            if moved < 0 and self.charge_drift:  # lost between the events: the method's own doing, all of it
                self.spent -= moved
            self.spent = max(self.spent - self.credit * max(moved, 0.0), 0.0)

    def baseline(self, outcomes: torch.Tensor) -> None:
        """Take the model's outcomes before its method changes anything as the last event's.

        With ``charge_drift`` what it loses from here on counts, before the first event too.
        """
        self._after_measure = float(outcomes.to(torch.float64).mean())

    def accept(self, cost: EventCost) -> None:
        """Count an accepted event's cost against the budget (the estimate itself: a negative one gives some back)."""
        self.spent += cost.drop
        self._after_measure = self._before_measure - cost.drop

    def state_dict(self) -> dict[str, Any]:
        """What a resumed fit needs to judge as this one would: what was spent, the measure after the last event."""
        return {"spent": self.spent, "after": self._after_measure}

    def load_state_dict(self, state: Mapping[str, Any] | float | None) -> None:
        """Resume from :meth:`state_dict` (a bare number: ``spent`` alone, as checkpoints stored it before)."""
        if state is None or isinstance(state, (int, float)):
            self.spent = float(state or 0.0)
            return
        self.spent = float(state.get("spent") or 0.0)
        after = state.get("after")
        self._after_measure = None if after is None else float(after)

    def release(self) -> None:
        """Drop the cached samples (end of fit)."""
        self._batches, self._reference, self.measure = [], None, None


@dataclass(frozen=True)
class BackOff:
    """What :func:`back_off` found.

    Attributes:
        position: the step's end chosen: the full step, the largest part within budget, or the start (none fits).
        cost: its cost (with none that fits: the cost of the smallest part tried).
        smallest: the smallest part tried (the full step when it fit).
    """

    position: float
    cost: EventCost
    smallest: float

    @property
    def held(self) -> bool:
        """Whether no part of the step fits (``position`` is the start)."""
        return not self.cost.within


def back_off(attempt: Callable[[float], EventCost], start: float, full: float, steps: int) -> BackOff:
    """The largest step from ``start`` towards ``full`` whose cost is within budget, bisected ``steps`` times.

    ``attempt(position)`` puts the model at ``position`` (from the same weights each time) and returns the cost;
    positions are any monotone scale of the step (sparsity, a share of a round, log-bytes).

    Examples:
        >>> def cost(position: float) -> EventCost:
        ...     return EventCost(position / 100, 0.0, position / 100 <= 0.01)
        >>> found = back_off(cost, 0.0, 4.0, steps=4)
        >>> found.position, found.held
        (1.0, False)
    """
    first = attempt(full)
    if first.within:
        return BackOff(full, first, full)
    lo, hi, chosen, smallest = start, full, None, first
    for _ in range(steps):
        mid = (lo + hi) / 2
        cost = attempt(mid)
        if cost.within:
            lo, chosen = mid, BackOff(mid, cost, mid)
        else:
            hi, smallest = mid, cost
    return chosen if chosen is not None else BackOff(start, smallest, hi)
