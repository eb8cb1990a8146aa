"""What every compression callback shares: windows, ordering, claims, masking and freezing by name, ranks, skip rules.

Composition (several callbacks in one ``fit``) rests on four rules kept here, so each callback keeps only its method:

* **Claims.** In ``setup`` each callback claims aspects (structure, support, values) of named tensors in the model's
  :class:`~lightning_compress.representation.Representation`; a second owner of an aspect is refused there,
  before the first step. The artifact's codecs are derived from the representation at save time.
* **Windows.** Each callback acts within ``[start, end]``, fractions of the fit's optimizer steps. Without explicit
  windows, several callbacks get consecutive ones in the order structure, support, values
  (:func:`default_windows`); callbacks that share tensors must act in that order in windows that do not overlap.
* **Order.** Per-step actions and end-of-fit actions of all compression callbacks run in that aspect order, whatever
  the order of ``Trainer(callbacks=...)`` (the first compression callback leads).
* **Names, not objects.** Masks (support) and frozen values are held by tensor name and looked up in the model every
  time they are applied, so a layer that shrinks or is swapped never leaves a stale reference behind.
"""

from __future__ import annotations

import functools
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn
from typing_extensions import override

from lightning_compress.arguments import check_number
from lightning_compress.callbacks.guard import MetricGuard
from lightning_compress.callbacks.memory import release_freed_memory
from lightning_compress.callbacks.optimizer_surgery import KeptIndices, reshape_parameters
from lightning_compress.codec.base import CodecSpec
from lightning_compress.functional.batchnorm import batch_norms, recalibrate_batch_norms_
from lightning_compress.functional.forward import (
    ForwardInputs,
    call_forward,
    default_forward_inputs,
    leading,
    to_device,
)
from lightning_compress.functional.selection import frozen_parameters
from lightning_compress.representation import ASPECTS, CompositionError, Representation, representation_of
from lightning_compress.saving import artifact_module, save

__all__ = ["FORWARD_INPUTS_ATTR", "CompressionCallback", "compression_event", "default_windows"]

#: Method a LightningModule may define, ``lc_forward_inputs(batch)``: the forward's arguments for a training batch.
FORWARD_INPUTS_ATTR = "lc_forward_inputs"
#: Training batches the BatchNorm statistics are re-estimated on after a method replaced weights at the end of fit.
NORM_CALIBRATION_BATCHES = 20
#: Strategies that shard parameters: a callback that reads and rewrites whole tensors cannot work under them.
_SHARDING_STRATEGIES = ("FSDP", "DeepSpeed", "ModelParallel")

log = logging.getLogger(__name__)

_Method = TypeVar("_Method", bound=Callable[..., Any])


def compression_event(name: str) -> Callable[[_Method], _Method]:
    """Mark a callback method as a compression event (a stage, an elimination round, the search, ...).

    Its wall time is added to ``callback.event_seconds[name]`` and it shows in ``torch.profiler`` traces as
    ``lc/<Callback>/<name>``, so a fit's overhead splits into per-step work and events (``bench.overhead``).

    Example:
        >>> class Demo(CompressionCallback):
        ...     @compression_event("stage")
        ...     def stage(self) -> int:
        ...         return 1
        >>> cb = Demo()
        >>> cb.stage(), sorted(cb.event_seconds), cb.event_counts["stage"]
        (1, ['stage'], 1)
    """

    def wrap(method: _Method) -> _Method:
        @functools.wraps(method)
        def timed(self: CompressionCallback, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            with torch.profiler.record_function(f"lc/{self.owner}/{name}"):
                # the last step's activations, freed but still resident, must not lie under the event's buffers
                release_freed_memory()
                try:
                    return method(self, *args, **kwargs)
                finally:
                    release_freed_memory()  # the event's working buffers must not stay resident under the next step
                    self.event_seconds[name] = self.event_seconds.get(name, 0.0) + time.perf_counter() - started
                    self.event_counts[name] = self.event_counts.get(name, 0) + 1

        return timed  # type: ignore[return-value]

    return wrap


def default_windows(
    callbacks: Iterable[CompressionCallback], span: tuple[float, float] = (0.0, 1.0), alone: bool = True
) -> dict[int, tuple[float, float]]:
    """Consecutive windows for callbacks given without ``start``/``end``, in the order structure, support, values.

    One callback keeps its own default (:attr:`CompressionCallback.DEFAULT_WINDOW`). Several split the fit into
    equal consecutive phases, one per aspect that trains (structure, support, trained values); a method that acts
    once at the end (``DEFAULT_WINDOW == (1.0, 1.0)``, WeightSharing) stays there. Each method keeps its own
    fine-tuning share inside its window (``final_fraction``). ``span``: the part of the fit they share (the rest is
    taken by callbacks given explicit windows; ``alone=False`` then, and a single callback takes the span too).

    Returns:
        ``id(callback)`` -> ``(start, end)``.

    Example:
        >>> from lightning_compress import NeuronElimination, SuccessivePruning, WeightSharing
        >>> cbs = [WeightSharing(), SuccessivePruning(), NeuronElimination()]
        >>> sorted(default_windows(cbs).values())
        [(0.0, 0.5), (0.5, 1.0), (1.0, 1.0)]
    """
    callbacks = list(callbacks)
    if len(callbacks) == 1 and alone:
        return {id(callbacks[0]): callbacks[0].DEFAULT_WINDOW}
    at_end = [cb for cb in callbacks if cb.DEFAULT_WINDOW == (1.0, 1.0)]
    training = [cb for cb in callbacks if cb not in at_end]
    phases = sorted({cb.ASPECT for cb in training}, key=ASPECTS.index)
    windows = {id(cb): (1.0, 1.0) for cb in at_end}
    lo, hi = span
    for cb in training:
        i = phases.index(cb.ASPECT)
        windows[id(cb)] = (lo + (hi - lo) * i / len(phases), lo + (hi - lo) * (i + 1) / len(phases))
    return windows


class CompressionCallback(Callback):
    """Base of the compression callbacks.

    Subclasses compress :meth:`target_module` (the module an artifact stores: the LightningModule's backbone when
    it exposes ``lc_artifact_module``, else the LightningModule itself), claim the aspects they decide with
    :meth:`claim` in ``setup``, act in :meth:`before_step` / :meth:`act` (each training step, inside or around their
    window) and :meth:`finish` (end of fit), hold masks and frozen values with :meth:`hold_support` /
    :meth:`hold_values`, and report their figures through :meth:`summary`.

    Args:
        forward_inputs: a function from a training batch to the forward's arguments (for calibration).
        start: fraction of the fit's optimizer steps where this callback's window starts (``None``: default).
        end: fraction where it ends (``None``: default); ``start == end`` acts once at that point.
    """

    #: Prefix of the keys this callback logs, e.g. ``"weight_sharing"``.
    LOG_PREFIX = "compress"
    #: The aspect of a tensor this method decides: ``"structure"``, ``"support"`` or ``"values"``.
    ASPECT: ClassVar[str] = "values"
    #: Figures of :meth:`log_figures` also shown in Lightning's progress bar (an event's progress: stage, round, cut).
    PROGRESS_KEYS: ClassVar[tuple[str, ...]] = ()
    #: Window when this callback is the only compression callback and none is given.
    DEFAULT_WINDOW: ClassVar[tuple[float, float]] = (0.0, 1.0)

    def __init__(
        self, forward_inputs: ForwardInputs | None = None, start: float | None = None, end: float | None = None
    ) -> None:
        if forward_inputs is not None and not callable(forward_inputs):
            raise ValueError(
                f"`forward_inputs` must be None or a function from a batch to the forward's arguments (a tensor, a "
                f"tuple of positional arguments or a dict of keyword arguments), got {forward_inputs!r}."
            )
        check_number("start", start, low=0, high=1, allow_none=True)
        check_number("end", end, low=0, high=1, allow_none=True)
        if start is not None and end is not None and float(start) > float(end):
            raise ValueError(f"`start` ({start}) must not be after `end` ({end}): both are fractions of the fit.")
        self.forward_inputs = forward_inputs
        self.start = None if start is None else float(start)
        self.end = None if end is None else float(end)
        self._window: tuple[float, float] | None = None
        self._total_steps = 0
        self._summary: dict[str, float] = {}
        #: tensor name -> mask (True keeps, False prunes), re-applied after every optimizer step
        self._support: dict[str, torch.Tensor] = {}
        #: tensor name -> value held fixed (gradients zeroed, value put back after every step)
        self._frozen: dict[str, torch.Tensor] = {}
        #: wall seconds and calls of each compression event (methods marked with :func:`compression_event`)
        self.event_seconds: dict[str, float] = {}
        self.event_counts: dict[str, int] = {}
        #: for this fit (set in on_fit_start): the leader's aspect-ordered compression callbacks, [] on the others
        self._fit_order: list[CompressionCallback] | None = None
        #: the validated state an accuracy guard goes back to (:meth:`take_snapshot`), dropped with the fit's state
        self._snapshot: dict[str, Any] | None = None
        #: set when a per-step action changed weights (a stage, a round): BatchNorm statistics are re-estimated before
        #: the next validation, so an accuracy guard judges the weights, not statistics of weights that are gone
        self.changed_weights = False

    @property
    def owner(self) -> str:
        """The name this callback claims tensors under (its class name)."""
        return type(self).__name__

    # -- composition -------------------------------------------------------------------------------------------
    @staticmethod
    def compression_callbacks(trainer: pl.Trainer) -> list[CompressionCallback]:
        """Every compression callback of ``trainer``, in aspect order (structure, support, values), stable."""
        found = [cb for cb in trainer.callbacks if isinstance(cb, CompressionCallback)]  # type: ignore[attr-defined]
        return sorted(found, key=lambda cb: ASPECTS.index(cb.ASPECT))

    def _leads(self, trainer: pl.Trainer) -> bool:
        if self._fit_order is not None:  # resolved once per fit (on_fit_start): the callbacks do not change in a fit
            return bool(self._fit_order)
        first = next((cb for cb in trainer.callbacks if isinstance(cb, CompressionCallback)), None)  # type: ignore[attr-defined]
        return first is self

    def _in_order(self, trainer: pl.Trainer) -> list[CompressionCallback]:
        return self._fit_order or self.compression_callbacks(trainer)

    @staticmethod
    def representation(pl_module: nn.Module) -> Representation:
        """The representation of the compressed module (claims of every callback)."""
        return representation_of(artifact_module(pl_module))

    def claim(self, pl_module: nn.Module, aspect: str, names: Iterable[str], kind: str) -> None:
        """Claim ``aspect`` of the named tensors (refused with both owners named if another callback holds it)."""
        self.representation(pl_module).claim(self.owner, aspect, names, kind)

    @property
    def window(self) -> tuple[float, float]:
        """``(start, end)`` fractions of the fit (resolved in ``setup`` from the arguments and the other callbacks)."""
        if self._window is not None:
            return self._window
        return self.explicit_window(None) or self.DEFAULT_WINDOW

    def explicit_window(self, trainer: pl.Trainer | None) -> tuple[float, float] | None:
        """The window the arguments ask for (``None``: none given, the defaults decide)."""
        if self.start is None and self.end is None:
            return None
        start = self.start if self.start is not None else self.DEFAULT_WINDOW[0]
        end = self.end if self.end is not None else max(self.DEFAULT_WINDOW[1], start)
        if self.start is None and self.DEFAULT_WINDOW[0] == self.DEFAULT_WINDOW[1]:
            start = end  # a method that acts once (WeightSharing): `end` alone says when
        if end < start:  # only `end` was given, before this method's default start: no silent swap
            raise ValueError(
                f"{self.owner}(end={end:g}) ends before its default start ({start:g} of the fit); give `start` too "
                f"(e.g. start=0, end={end:g})."
            )
        return (start, end)

    def window_steps(self) -> tuple[int, int]:
        """The window in optimizer steps of this fit."""
        start, end = self.window
        return round(start * self._total_steps), round(end * self._total_steps)

    def window_ended_mid_fit(self, trainer: pl.Trainer) -> bool:
        """Whether this window ends before the fit does and its last step has been reached."""
        return self.window[1] < 1.0 and trainer.global_step >= self.window_steps()[1]

    def steps_in_window(self, count: int, final_fraction: float) -> list[int]:
        """``count`` evenly spaced steps over the first ``1 - final_fraction`` of the window (the last at its end).

        Never past the window's end: a window shorter than ``count`` steps acts several times at one step.
        """
        first, last = self.window_steps()
        span = max(round((last - first) * (1.0 - final_fraction)), min(count, last - first))
        return [min(last, first + max(1, round(span * (i + 1) / count))) for i in range(count)]

    def _resolve_windows(self, trainer: pl.Trainer) -> None:
        callbacks = self.compression_callbacks(trainer)
        explicit = {id(cb): cb.explicit_window(trainer) for cb in callbacks}
        implicit = [cb for cb in callbacks if explicit[id(cb)] is None]
        given = [(cb, w) for cb in callbacks if (w := explicit[id(cb)]) is not None]
        # the callbacks without a window share, in aspect order, the part of the fit the explicit ones leave
        lo, hi = 0.0, 1.0
        if implicit and given:
            first = min(ASPECTS.index(cb.ASPECT) for cb in implicit)
            last = max(ASPECTS.index(cb.ASPECT) for cb in implicit)
            lo = max([w[1] for cb, w in given if ASPECTS.index(cb.ASPECT) < first and w[1] < 1.0], default=0.0)
            hi = min([w[0] for cb, w in given if ASPECTS.index(cb.ASPECT) > last and w[0] > lo], default=1.0)
        defaults = default_windows(implicit, span=(lo, hi), alone=not given)
        for cb in callbacks:
            cb._window = explicit[id(cb)] or defaults.get(id(cb)) or cb.DEFAULT_WINDOW

    def check_composition(self, trainer: pl.Trainer, pl_module: nn.Module) -> None:
        """Refuse windows that overlap or run out of aspect order on shared tensors (before the first step)."""
        rep = self.representation(pl_module)
        mine = {n for aspect in ASPECTS for n in rep.owned(self.owner, aspect)}
        for other in self.compression_callbacks(trainer):
            if other is self or ASPECTS.index(other.ASPECT) < ASPECTS.index(self.ASPECT):
                continue
            theirs = {n for aspect in ASPECTS for n in rep.owned(other.owner, aspect)}
            shared = sorted(mine & theirs)
            if not shared or other.ASPECT == self.ASPECT:
                continue
            (s0, e0), (s1, e1) = self.window, other.window
            if e0 > s1:
                raise CompositionError(
                    f"{self.owner} (window {s0:g}-{e0:g} of the fit, {self.ASPECT}) and {other.owner} (window "
                    f"{s1:g}-{e1:g}, {other.ASPECT}) act on the same tensors ({', '.join(shared[:3])}"
                    f"{', ...' if len(shared) > 3 else ''}) in overlapping windows: the {self.ASPECT} must be decided "
                    f"before the {other.ASPECT}. Give {self.owner} an `end` at most {other.owner}'s `start`, or leave "
                    "every `start`/`end` unset for consecutive default windows."
                )

    # -- hooks the subclasses fill ------------------------------------------------------------------------------
    def before_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Called before every training step, in aspect order (e.g. swap layers when the window opens)."""

    def add_gradients(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Called before every optimizer step, in aspect order, before any mask is applied to the gradients.

        Where a method adds a term of its own to the loss's gradients (RateAware's rate term): the gradients are
        complete (accumulated, unscaled under mixed precision, reduced across processes) and not yet clipped.
        """

    def act(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Called after every training step (masks already re-applied), in aspect order."""

    def finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Called once at the end of the fit, in aspect order."""

    # -- the shared hooks ---------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Refuse strategies that shard parameters (FSDP, DeepSpeed): every method reads whole tensors."""
        name = type(trainer.strategy).__name__
        if stage == "fit" and any(s.lower() in name.lower() for s in _SHARDING_STRATEGIES):
            raise ValueError(
                f"{type(self).__name__} reads and rewrites whole parameter tensors, which the {name} strategy shards "
                "across processes; use strategy='ddp' (or a single device)."
            )
        if stage == "fit":
            owners = [cb.owner for cb in self.compression_callbacks(trainer)]
            if owners.count(self.owner) > 1:
                raise CompositionError(
                    f"{owners.count(self.owner)} {self.owner} callbacks in one fit: give one instance the tensors it "
                    "should compress (`parameters=` / `layers=`), or combine them into one."
                )
            self._resolve_windows(trainer)
            # claims of owners that are not in this fit are an earlier fit's decisions: new claims replace them
            self.representation(pl_module).active = set(owners)
            frozen = frozen_parameters(self.target_module(pl_module))
            if frozen and self._leads(trainer):
                shown = ", ".join(frozen[:4]) + (f", ... ({len(frozen) - 4} more)" if len(frozen) > 4 else "")
                rank_zero_info(
                    f"lightning_compress: {len(frozen)} frozen parameter(s) (requires_grad=False) are left alone by "
                    f"every compression callback: {shown}."
                )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total) and not self.should_skip(trainer):
            raise ValueError(
                f"{self.owner} places its work at fractions of the fit, and this fit's length is unknown (an iterable "
                "dataset without a length, or max_epochs=-1): set `max_steps` on the Trainer."
            )
        self._total_steps = int(total) if math.isfinite(total) else 0
        self.check_composition(trainer, pl_module)
        self._fit_order = None
        # per step the leader runs everyone's actions: who leads and in what order is resolved once per fit
        self._fit_order = self.compression_callbacks(trainer) if self._leads(trainer) else []

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._leads(trainer) and not self.should_skip(trainer):
            for cb in self._in_order(trainer):
                cb.before_step(trainer, pl_module)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._leads(trainer) and not self.should_skip(trainer):
            # the leader's hook runs before any other compression callback's: every added term is masked after
            for cb in self._in_order(trainer):
                cb.add_gradients(trainer, pl_module)
        if not (self._support or self._frozen):
            return
        params = dict(self.target_module(pl_module).named_parameters())
        grads: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        for name, mask in self._support.items():
            grad = params[name].grad
            if grad is not None:
                grads.append(grad)
                masks.append(mask)
        if grads:  # one fused call for every tensor, not one kernel launch per tensor
            torch._foreach_mul_(grads, masks)
        frozen = [g for g in (params[n].grad for n in self._frozen) if g is not None]
        if frozen:
            torch._foreach_zero_(frozen)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._leads(trainer):
            callbacks = self._in_order(trainer)
            for cb in callbacks:
                cb.apply_holds(pl_module)
            if not self.should_skip(trainer):
                for cb in callbacks:
                    cb.act(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._leads(trainer) and not self.should_skip(trainer):
            callbacks = self._in_order(trainer)
            for cb in callbacks:
                cb.apply_holds(pl_module)
                cb.finish(trainer, pl_module)
            # the file's BatchNorm statistics describe the final weights (a stage or a codebook at the very end has no
            # training step after it to update them)
            self.recalibrate_norms(trainer, pl_module, " and ".join(cb.owner for cb in callbacks))

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.release_fit_state()

    def release_fit_state(self) -> None:
        """Drop what only the fit needed (masks, held values, snapshots).

        The weights and the representation carry the result; a callback kept after ``fit`` holds no model copy.
        """
        self.release_holds()
        self._snapshot = None

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._leads(trainer) or self.should_skip(trainer):
            return
        callbacks = self._in_order(trainer)
        changed = [cb.owner for cb in callbacks if cb.changed_weights or cb.guarding]
        for cb in callbacks:
            cb.changed_weights = False
        if changed:
            self.recalibrate_norms(trainer, pl_module, " and ".join(changed), quiet=True)

    def require_validation(
        self, trainer: pl.Trainer, pl_module: nn.Module, guard: MetricGuard | None, what: str, instead: str
    ) -> None:
        """Refuse, before the first step, a guard (``guard`` not ``None``) in a fit without a validation loop.

        ``what`` says what the guard holds (e.g. "its sparsity"); ``instead`` the argument that goes unguarded.

        Raises:
            ValueError: naming the default guard or ``accuracy_budget=``, and what to pass instead.
        """
        if guard is None or self.should_skip(trainer) or self.has_validation(trainer, pl_module):
            return
        raise ValueError(
            f"{self.owner} guards {what} with a validation metric "
            f"({'the default, with no target given' if guard.default else 'accuracy_budget='}), and this fit has no "
            "validation loop (no `validation_step`, no validation data, or `limit_val_batches=0`). Pass validation "
            f"data to `fit`, or give {instead} unguarded."
        )

    def guard_validation(
        self, trainer: pl.Trainer, guard: MetricGuard, position: int, names: Iterable[str], unit: str, hint: str
    ) -> tuple[str, int, bool] | None:
        """One validation under an accuracy guard, for a callback that acts in counted steps (stages, cuts).

        Finds the monitored metric at the first validation; then judges the drop from the best. Over budget, the
        snapshot of the last validation within budget is restored (weights of ``names``, masks, statistics).
        Otherwise a snapshot is taken when ``position`` (steps done) moved since the last one.

        Returns:
            ``None`` to go on, or ``(reason, position to hold, warn)`` when the callback must stop: the metric is
            missing (``hint`` says what to give instead) or the last steps (``unit``) were undone.
        """
        if guard.monitor is None or guard.mode is None:
            if not guard.resolve(trainer.callback_metrics):
                found = sorted(trainer.callback_metrics)
                reason = (
                    f"no validation metric to guard with was found among {found} (name one with `monitor=`, or give "
                    f"{hint})"
                )
                return reason, position, True
            rank_zero_info(guard.describe() + f": {unit}s since a validation that falls further are undone.")
        if self.should_skip(trainer):
            return None
        over, drop = guard.judge(trainer.callback_metrics)
        if bool(self.broadcast(trainer, over)) and self._snapshot is not None:
            restored = int(self._snapshot["position"])
            self.restore_snapshot(trainer.lightning_module, self._snapshot)
            self.log_figures(trainer, {f"undone_{unit}s": float(position - restored)})
            reason = (
                f"{guard.monitor} fell {drop:.4g} below its best (over its budget): the last {position - restored} "
                f"{unit}(s) were undone"
            )
            return reason, restored, False
        if self._snapshot is None or int(self._snapshot["position"]) != position:
            self._snapshot = {"position": position, **self.take_snapshot(trainer.lightning_module, names)}
        return None

    @property
    def guarding(self) -> bool:
        """Whether an accuracy guard of this callback watches validations now (they must see true accuracy)."""
        return False

    @compression_event("norm_calibration")
    def recalibrate_norms(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, who: str, quiet: bool = False
    ) -> None:
        """Re-estimate the BatchNorm statistics on training batches (after ``who`` replaced weights)."""
        module = self.target_module(pl_module)
        if not batch_norms(module):
            return
        inputs = self.training_inputs(trainer, pl_module, NORM_CALIBRATION_BATCHES, who)
        read = recalibrate_batch_norms_(module, inputs)
        buffers = [b for m in batch_norms(module) for b in (m.running_mean, m.running_var) if b is not None]
        if trainer.world_size > 1:  # every rank read its own batches: rank 0's statistics everywhere
            for buffer in buffers:
                buffer.copy_(self.broadcast(trainer, buffer))
        if not quiet:
            rank_zero_info(
                f"{who} finished: the BatchNorm running statistics were re-estimated on {read} training batches, so "
                "that they describe the final weights."
            )

    # -- holds: masks and frozen values, by name ------------------------------------------------------------------
    def hold_support(self, pl_module: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
        """Keep the zeros of ``masks`` (name -> 0/1 or bool tensor) for the rest of the fit, applied now.

        Held as ``bool`` on the parameter's device: a quarter of a float mask's bytes.
        """
        params = dict(self.target_module(pl_module).named_parameters())
        self._support = {n: m.to(params[n].device, torch.bool) for n, m in masks.items()}
        self.apply_holds(pl_module)

    def hold_values(self, pl_module: nn.Module, names: Iterable[str]) -> None:
        """Keep the named tensors at their current values for the rest of the fit."""
        params = dict(self.target_module(pl_module).named_parameters())
        self._frozen.update({n: params[n].detach().clone() for n in names})

    def release_holds(self) -> None:
        """Stop holding masks and values (e.g. after the layers they refer to changed shape)."""
        self._support, self._frozen = {}, {}

    @torch.no_grad()
    def apply_holds(self, pl_module: nn.Module) -> None:
        """Re-apply the masks and frozen values (momentum and weight decay move entries whose gradient is zero)."""
        if not (self._support or self._frozen):
            return
        params = dict(self.target_module(pl_module).named_parameters())
        if self._support:
            torch._foreach_mul_([params[n] for n in self._support], list(self._support.values()))
        if self._frozen:
            torch._foreach_copy_([params[n] for n in self._frozen], list(self._frozen.values()))

    def take_snapshot(self, pl_module: nn.Module, names: Iterable[str]) -> dict[str, Any]:
        """The named tensors, the held masks and the BatchNorm statistics, copied to the CPU (for an undo).

        The statistics were re-estimated for these weights before the validation that judged them, so they go back
        with them (:meth:`restore_snapshot`).
        """
        params = dict(self.target_module(pl_module).named_parameters())
        return {
            "weights": {n: params[n].detach().to("cpu", copy=True) for n in names},
            "masks": {n: m.detach().to("cpu", copy=True) for n, m in self._support.items()},
            "buffers": {n: b.detach().to("cpu", copy=True) for n, b in self.target_module(pl_module).named_buffers()},
        }

    @torch.no_grad()
    def restore_snapshot(self, pl_module: nn.Module, snapshot: Mapping[str, Any]) -> None:
        """Put back what :meth:`take_snapshot` copied (weights, statistics) and hold its masks again."""
        params = dict(self.target_module(pl_module).named_parameters())
        for name, value in snapshot["weights"].items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
        for name, buffer in self.target_module(pl_module).named_buffers():
            if name in snapshot["buffers"] and snapshot["buffers"][name].shape == buffer.shape:
                buffer.copy_(snapshot["buffers"][name].to(buffer.device, buffer.dtype))
        self.release_holds()
        if snapshot["masks"]:
            self.hold_support(pl_module, snapshot["masks"])

    def masks_state(self) -> dict[str, Any]:
        """The held masks as checkpoint data: bit-packed (one bit per entry), with names and shapes."""
        return {
            "mask_names": list(self._support),
            "masks": [
                torch.from_numpy(np.packbits(m.detach().cpu().numpy().astype(bool).reshape(-1)))
                for m in self._support.values()
            ],
            "mask_shapes": [list(m.shape) for m in self._support.values()],
        }

    @staticmethod
    def masks_from_state(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Inverse of :meth:`masks_state` (name -> bool mask on the CPU)."""
        masks = {}
        for name, packed, shape in zip(
            state.get("mask_names", []), state.get("masks", []), state.get("mask_shapes", []), strict=True
        ):
            bits = np.unpackbits(packed.numpy())[: math.prod(shape)].astype(bool)
            masks[name] = torch.from_numpy(bits).reshape(shape)
        return masks

    @contextmanager
    def trial_artifact(self, pl_module: nn.Module, codecs: Mapping[str, CodecSpec] | None = None) -> Iterator[Path]:
        """The artifact the module would be written as now: a real file in a temporary directory, removed after.

        ``codecs`` overrides the codecs the representation calls for (e.g. a stage not yet recorded in it).
        """
        with tempfile.TemporaryDirectory() as tmp:
            yield save(self.target_module(pl_module), Path(tmp) / "trial.lcz", codecs=codecs, codecs_decided=True)

    def trial_bytes(self, pl_module: nn.Module, codecs: Mapping[str, CodecSpec] | None = None) -> int:
        """Size of :meth:`trial_artifact`."""
        with self.trial_artifact(pl_module, codecs) as path:
            return path.stat().st_size

    def rebuild_optimizers(self, trainer: pl.Trainer, change: Callable[[], KeptIndices] | None = None) -> None:
        """Run ``change`` (it replaces parameters, returns what it kept of each), then rebuild the optimizers.

        The LR, the schedulers' progress, each group's hyperparameters, ``requires_grad`` and every parameter's
        optimizer state (sliced to the kept entries) carry on as in an uninterrupted fit; under DDP the model is
        wrapped again first (see :mod:`~lightning_compress.callbacks.optimizer_surgery`).
        """
        root = trainer.lightning_module
        target = self.target_module(root)
        prefix = next((name for name, sub in root.named_modules() if sub is target), "")
        reshape_parameters(trainer, change or dict, prefix)

    @staticmethod
    def target_module(pl_module: nn.Module) -> nn.Module:
        """The module to compress (and that artifacts store)."""
        return artifact_module(pl_module)

    @staticmethod
    def should_skip(trainer: pl.Trainer) -> bool:
        """No compression during the sanity check, outside ``fit`` or under ``fast_dev_run``."""
        fast_dev_run = getattr(trainer, "fast_dev_run", False)
        return bool(trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or fast_dev_run)

    def summary(self) -> dict[str, float]:
        """The figures of the last compression step, keys prefixed with :attr:`LOG_PREFIX`."""
        return dict(self._summary)

    def log_figures(self, trainer: pl.Trainer, figures: Mapping[str, float]) -> None:
        """Record figures in :meth:`summary` and send them to every logger.

        Goes through the loggers directly, so it works in hooks where ``self.log`` is forbidden.
        """
        prefixed = {f"{self.LOG_PREFIX}/{k}": float(v) for k, v in figures.items()}
        self._summary.update(prefixed)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(prefixed, step=trainer.global_step)
        shown = {f"{self.LOG_PREFIX}/{k}": float(v) for k, v in figures.items() if k in self.PROGRESS_KEYS}
        if shown:
            self._show_in_progress_bar(trainer, shown)

    @staticmethod
    def _show_in_progress_bar(trainer: pl.Trainer, shown: Mapping[str, float]) -> None:
        """Put an event's figures (a stage, a round, a cut) in Lightning's progress bar, beside the loss."""
        module = trainer.lightning_module
        if trainer.progress_bar_callback is None or module is None:
            return
        try:
            for key, value in shown.items():
                module.log(key, value, prog_bar=True, logger=False, on_step=True, on_epoch=False)
        except MisconfigurationException as err:  # hooks where Lightning forbids logging (end of fit): the log says it
            log.debug("progress bar not updated: %s", err)

    @staticmethod
    def broadcast(trainer: pl.Trainer, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (every rank must call this)."""
        return trainer.strategy.broadcast(obj, src=0)

    @staticmethod
    def has_validation(trainer: pl.Trainer, pl_module: nn.Module, needs_step: bool = True) -> bool:
        """Whether ``fit`` will run a validation loop (with ``validation_step`` unless ``needs_step`` is False)."""
        from lightning.pytorch.utilities.model_helpers import is_overridden

        source = getattr(trainer.fit_loop.epoch_loop.val_loop, "_data_source", None)
        defined = source is not None and source.is_defined()
        step = is_overridden("validation_step", pl_module) or not needs_step
        return bool(defined and step and trainer.limit_val_batches != 0)

    def forward_inputs_fn(self, pl_module: nn.Module) -> ForwardInputs:
        """How a batch becomes the forward's arguments.

        ``forward_inputs``, else the LightningModule's ``lc_forward_inputs(batch)``, else the batch's first element.
        """
        if self.forward_inputs is not None:
            return self.forward_inputs
        hook = getattr(pl_module, FORWARD_INPUTS_ATTR, None)
        return hook if callable(hook) else default_forward_inputs

    def training_inputs(
        self, trainer: pl.Trainer, pl_module: nn.Module, batches: int, who: str, shard: bool = False
    ) -> Iterator[Any]:
        """The forward's arguments for the first ``batches`` training batches, for calibration.

        With ``shard`` under several processes, each rank reads its own share of them (batch ``i`` goes to rank
        ``i % world_size``), for statistics the caller sums over ranks; without it every rank reads the same ones.

        Raises:
            RuntimeError: the fit has no training data loader (``who`` names the caller).
        """
        source = getattr(trainer.fit_loop, "_data_source", None)
        loader = source.dataloader() if source is not None else None
        if loader is None:
            raise RuntimeError(f"{who} calibrates on training data: pass `train_dataloaders` or a datamodule to `fit`.")
        to_inputs = self.forward_inputs_fn(pl_module)
        world, rank = (trainer.world_size, trainer.global_rank) if shard else (1, 0)
        for i, batch in enumerate(loader):
            if i >= batches:
                return
            if i % world == rank:
                yield to_inputs(batch)

    def check_forward(self, trainer: pl.Trainer, pl_module: nn.Module, who: str) -> Any:
        """Run the compressed module once on two samples of the first training batch, before the first step.

        Returns:
            Those two samples' forward arguments (on the module's device), e.g. for tracing.

        Raises:
            TypeError: naming ``forward_inputs`` and ``lc_forward_inputs``, when the forward fails on them.
        """
        module = self.target_module(pl_module)
        device = next(module.parameters()).device
        inputs = self.training_inputs(trainer, pl_module, 1, who)  # no loader: its own RuntimeError
        was_training = module.training
        try:
            example = to_device(leading(next(inputs), 2), device)
            module.eval()
            with torch.no_grad():
                call_forward(module, example)
        except Exception as err:
            raise TypeError(self._forward_help(who, err)) from err
        finally:
            module.train(was_training)
        return example

    @staticmethod
    def _forward_help(who: str, err: BaseException) -> str:
        return (
            f"{who} runs the model on training batches to calibrate, and the forward failed on the first batch "
            f"({type(err).__name__}: {err}). By default it calls `model(batch[0])`. Pass `forward_inputs=` to the "
            "callback, or define `lc_forward_inputs(self, batch)` on your LightningModule: a function from a batch "
            "to the forward's arguments (a tensor, a tuple of positional arguments or a dict of keyword arguments)."
        )
