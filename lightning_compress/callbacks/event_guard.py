"""The event guard: a compression event judged by its own cost, and the back-off to the largest step that fits.

:class:`EventGuard` scores the model right before an event against right after it on the same cached validation
samples (a paired comparison whose standard error is counted), whatever the fit's validation schedule. It is the
default guard of SuccessivePruning (stages) and NeuronElimination (rounds), and RateAware's with ``guard="event"``.
:func:`back_off` bisects a step over budget to the largest part within it; :func:`judge_event` runs the whole
judgement for a callback (rank 0 judges, every rank gets its choice), so each callback says only how its step is put
on the model and taken back.
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

from lightning_compress.callbacks.calibration import as_the_fit_sees, event_norm_inputs, read_batches
from lightning_compress.callbacks.guard import DEFAULT_ACCURACY_BUDGET
from lightning_compress.callbacks.validation import ValidationScorer, validation_loader
from lightning_compress.functional.batchnorm import recalibrate_batch_norms_
from lightning_compress.functional.forward import ForwardInputs, call_forward, to_device

__all__ = [
    "EVENT_SAMPLES",
    "RECOVERY_CREDIT",
    "BackOff",
    "EventCost",
    "EventGuard",
    "Judged",
    "back_off",
    "judge_event",
    "measure_now",
    "over_budget",
]

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
    the first event. A model that scores no better than chance is not judged (:meth:`at_chance`): its events are
    deferred. An event no part of which fits is refused (:meth:`refuse`): its callback skips it, a later one tries.

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
        #: events no part of which fitted (their callback skipped them), and why the latest did not (cleared on accept)
        self.refusals = 0
        self.last_refusal = ""
        #: the accuracy of always answering the commonest class of the cached samples (None: label-free measure)
        self.chance: float | None = None
        #: events deferred because the model was at chance (nothing tried)
        self.deferrals = 0

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
        if self.measure == "accuracy":  # what a model that always answers the commonest class scores
            labels = torch.cat([y.reshape(-1) for _, y in self._batches]).long().cpu()
            self.chance = float(torch.bincount(labels - labels.min()).max()) / max(labels.numel(), 1)
        rank_zero_info(f"{self.owner}: {self.describe()}.")

    def at_chance(self, before: torch.Tensor) -> bool:
        """Whether the model scores no better than :attr:`chance` (within two standard errors) on the samples.

        Such a model cannot be judged (its top-1 flips on any change, our design): an event due then is deferred,
        not refused. Label-free measures have no chance level and are always judged.

        Examples:
            >>> guard = EventGuard("Demo"); guard.chance = 0.1  # ten balanced classes
            >>> guard.at_chance(torch.arange(1000) < 110), guard.at_chance(torch.arange(1000) < 200)
            (True, False)
        """
        if self.chance is None or before.numel() == 0:
            return False
        n, p = before.numel(), self.chance
        return float(before.to(torch.float64).mean()) <= p + 2.0 * math.sqrt(p * (1.0 - p) / n)

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
            for batch in map(partial(as_the_fit_sees, trainer), read_batches(validation_loader(trainer) or [])):
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

    def outcomes_after_norms(self, model: nn.Module, module: nn.Module, norm_inputs: list[Any]) -> torch.Tensor:
        """:meth:`outcomes` after ``module``'s BatchNorm statistics are re-estimated on ``norm_inputs`` (if any)."""
        if norm_inputs:
            recalibrate_batch_norms_(module, norm_inputs)
        return self.outcomes(model)

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
        self.last_refusal = ""
        self.spent += cost.drop
        self._after_measure = self._before_measure - cost.drop

    def refuse(self, reason: str) -> None:
        """Count an event no part of which fitted (its callback skips it; a later one tries again)."""
        self.refusals += 1
        self.last_refusal = reason

    def refusal_summary(self, unit: str) -> str:
        """One clause for a callback's closing line: ``unit``s deferred and refused, and why the latest was refused."""
        parts = []
        if self.deferrals:
            parts.append(f"{self.deferrals} {unit}(s) deferred while the model was at chance")
        if self.refusals:
            last = f" (the last event too: {self.last_refusal})" if self.last_refusal else ""
            parts.append(f"{self.refusals} {unit}(s) skipped over budget{last}")
        return "; ".join(parts)

    def chance_line(self) -> str:
        """Why an event is deferred (:meth:`at_chance`), in words."""
        return (
            f"the model scores no better than chance on the guard's samples (always answering the commonest class "
            f"scores {100 * (self.chance or 0.0):.1f}%), so no change of it can be judged yet"
        )

    def state_dict(self) -> dict[str, Any]:
        """What a resumed fit needs to judge as this one would: what was spent, the measure after the last event."""
        counts = {"refusals": self.refusals, "last_refusal": self.last_refusal, "deferrals": self.deferrals}
        return {"spent": self.spent, "after": self._after_measure, **counts}

    def load_state_dict(self, state: Mapping[str, Any] | float | None) -> None:
        """Resume from :meth:`state_dict` (a bare number: ``spent`` alone, as checkpoints stored it before)."""
        if state is None or isinstance(state, (int, float)):
            self.spent = float(state or 0.0)
            return
        self.spent = float(state.get("spent") or 0.0)
        self.refusals = int(state.get("refusals") or 0)
        self.last_refusal = str(state.get("last_refusal") or "")
        self.deferrals = int(state.get("deferrals") or 0)
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
        deferred: nothing was tried: the model was at chance on the guard's samples (:meth:`EventGuard.at_chance`).
    """

    position: float
    cost: EventCost
    smallest: float
    deferred: bool = False

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


class Judged(Protocol):
    """What :func:`judge_event` needs of a callback."""

    @property
    def owner(self) -> str:
        """The callback's name."""

    def target_module(self, pl_module: nn.Module) -> nn.Module:
        """The module it compresses."""

    def forward_inputs_fn(self, pl_module: nn.Module) -> ForwardInputs:
        """How a batch becomes the forward's arguments."""


def measure_now(callback: Judged, trainer: pl.Trainer, guard: EventGuard) -> tuple[torch.Tensor, list[Any]]:
    """The guard's outcomes of the model as it is, and the batches its BatchNorm statistics are re-estimated on.

    Caches the guard's samples first (once per fit). The same batches serve every trial of an event
    (:func:`~lightning_compress.callbacks.calibration.event_norm_inputs`), so the trials differ in the step alone.
    """
    pl_module = trainer.lightning_module
    to_inputs = callback.forward_inputs_fn(pl_module)
    guard.prepare(trainer, pl_module, to_inputs)
    module = callback.target_module(pl_module)
    norm_inputs = event_norm_inputs(trainer, module, to_inputs, callback.owner)
    return guard.outcomes_after_norms(pl_module, module, norm_inputs), norm_inputs


def judge_event(
    callback: Judged,
    trainer: pl.Trainer,
    guard: EventGuard,
    put: Callable[[float], object],
    restore: Callable[[], None],
    span: tuple[float, float],
    steps: int,
) -> BackOff:
    """The largest step of an event within ``guard``'s budget, judged on rank 0 and broadcast to every rank.

    ``put(position)`` applies the step up to ``position`` to the model as :func:`restore` left it; ``span`` is
    (no step, the whole step) on any monotone scale (:func:`back_off`). The model is restored before returning:
    the caller applies the chosen step (every rank the same), or holds where it is when ``held`` (``deferred``:
    the model was at chance, nothing was tried).
    """
    chosen: BackOff | None = None
    if trainer.is_global_zero:
        pl_module = trainer.lightning_module
        module = callback.target_module(pl_module)
        before, norm_inputs = measure_now(callback, trainer, guard)
        if guard.at_chance(before):
            chosen = BackOff(span[0], EventCost(0.0, 0.0, False), span[0], deferred=True)
        else:
            guard.begin(before)

            def attempt(position: float) -> EventCost:
                restore()
                put(position)
                return guard.judge(before, guard.outcomes_after_norms(pl_module, module, norm_inputs))

            chosen = back_off(attempt, span[0], span[1], steps)
        restore()  # the weights, masks and statistics as they were: the caller applies what was chosen
    chosen = trainer.strategy.broadcast(chosen, src=0)
    assert chosen is not None  # noqa: S101 - broadcast returns rank 0's decision
    if chosen.deferred:
        guard.deferrals += 1
    return chosen


def over_budget(what: str, guard: EventGuard, cost: EventCost) -> str:
    """Why a callback holds: ``what`` (its smallest step tried) cost ``cost``, over what is left of the budget.

    Examples:
        >>> why = over_budget("stage 3's smallest step", EventGuard("Demo"), EventCost(0.02, 0.005, False))
        >>> why.split(": ")[0]
        "stage 3's smallest step cost 2.00 ± 0.50 pt on the guard's samples"
    """
    return (
        f"{what} cost {cost} on the guard's samples: with one standard error more than the "
        f"{100 * guard.allowance:.2f} pt left of its {100 * guard.budget:g}-pt budget"
    )
