"""The base of the compression callbacks: Lightning's hooks dispatched in the fit plan's order, and logging.

What every compression callback shares lives in rooms of its own, and this class binds them:

* the fit plan (:mod:`~lightning_compress.callbacks.plan`): order, windows, leader, built once per fit;
* holds (:mod:`~lightning_compress.callbacks.holds`): masks and frozen values by tensor name;
* the guard (:mod:`~lightning_compress.callbacks.guard`): a validation metric against its best;
* calibration (:mod:`~lightning_compress.callbacks.calibration`): training inputs, the forward check, BatchNorm;
* events (:mod:`~lightning_compress.callbacks.events`): timing and memory release of stages, rounds, searches.

Composition rests on claims (:mod:`lightning_compress.representation`): in ``setup`` each callback claims aspects
(structure, support, values) of named tensors; a second owner of an aspect is refused there, before the first
step. Per-step actions and end-of-fit actions of all compression callbacks run in aspect order, whatever the order
of ``Trainer(callbacks=...)``: the plan's leader (the first compression callback) runs them.
"""

from __future__ import annotations

import functools
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn
from typing_extensions import override

from lightning_compress.arguments import check_number
from lightning_compress.callbacks import calibration
from lightning_compress.callbacks.events import EventBudget, compression_event
from lightning_compress.callbacks.holds import Holds, StepHooks, clips_gradients, held_gradients_matter
from lightning_compress.callbacks.optimizer_surgery import KeptIndices, reshape_parameters
from lightning_compress.callbacks.plan import FitPlan, compression_callbacks, should_skip, spread_steps
from lightning_compress.functional.forward import ForwardInputs
from lightning_compress.functional.selection import frozen_parameters
from lightning_compress.representation import CompositionError, Representation, representation_of
from lightning_compress.saving import artifact_module

__all__ = ["CompressionCallback"]

#: Strategies that shard parameters: a callback that reads and rewrites whole tensors cannot work under them.
_SHARDING_STRATEGIES = ("FSDP", "DeepSpeed", "ModelParallel")

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=256)
def _state_key(name: str, arguments: tuple[tuple[str, Any], ...]) -> str:
    return f"{name}{dict(arguments)!r}"  # Lightning's `Callback._generate_state_key`, character for character


class CompressionCallback(Callback):
    """Base of the compression callbacks.

    Subclasses compress :meth:`target_module` (the module an artifact stores: the LightningModule's backbone when
    it exposes ``lc_artifact_module``, else the LightningModule itself), claim the aspects they decide with
    :meth:`claim` in ``setup``, act in :meth:`before_step` / :meth:`act` (each training step, inside or around their
    window) and :meth:`finish` (end of fit), hold masks and frozen values with :attr:`holds`, and report their
    figures through :meth:`summary`.

    Args:
        forward_inputs: a function from a training batch to the forward's arguments (for calibration).
        start: fraction of the fit's optimizer steps where this callback's window starts (``None``: default).
        end: fraction where it ends (``None``: default); ``start == end`` acts once at that point.
    """

    #: Marks the compression callbacks among a Trainer's callbacks (the fit plan collects them).
    LC_COMPRESSION: ClassVar[bool] = True
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
        #: the plan of the current (or last) fit, shared by its compression callbacks
        self.fit_plan: FitPlan | None = None
        self._summary: dict[str, float] = {}
        #: masks and frozen values, by tensor name
        self.holds = Holds()
        #: the leader's hooks on the fit's optimizers, which put every callback's holds back right after each step
        self.step_hooks = StepHooks()
        #: wall seconds and calls of each compression event (methods marked with :func:`compression_event`)
        self.event_seconds: dict[str, float] = {}
        self.event_counts: dict[str, int] = {}
        #: what this callback's optional events (guarded stages, rounds) may take of the fit, in its training steps
        self.event_budget = EventBudget()
        #: (event, start, end) in ``time.perf_counter`` seconds, the latest 1,000 events
        self.event_log: deque[tuple[str, float, float]] = deque(maxlen=1000)
        #: the validated state an accuracy guard goes back to (see :func:`~.guard.guard_validation`)
        self.guard_snapshot: dict[str, Any] | None = None
        #: set when a per-step action changed weights (a stage, a round): BatchNorm statistics are re-estimated before
        #: the next validation, so an accuracy guard judges the weights, not statistics of weights that are gone
        self.changed_weights = False

    @property
    def owner(self) -> str:
        """The name this callback claims tensors under (its class name)."""
        return type(self).__name__

    @override
    def _generate_state_key(self, **kwargs: Any) -> str:
        # Lightning reads `state_key` around every hook call (its profiler's names): formatted once per argument set
        try:
            return _state_key(type(self).__qualname__, tuple(kwargs.items()))
        except TypeError:  # an argument that cannot be hashed
            return super()._generate_state_key(**kwargs)

    # -- the plan --------------------------------------------------------------------------------------------------
    def _leads(self, trainer: pl.Trainer) -> bool:
        if self.fit_plan is not None and self in self.fit_plan:
            return self.fit_plan.leader is self
        callbacks = compression_callbacks(trainer)
        return bool(callbacks) and callbacks[0] is self

    def _in_order(self, trainer: pl.Trainer) -> list[CompressionCallback]:
        if self.fit_plan is not None:
            return self.fit_plan.order
        return FitPlan.of(compression_callbacks(trainer), trainer=trainer).order

    @property
    def window(self) -> tuple[float, float]:
        """``(start, end)`` fractions of the fit (from the fit plan, else the arguments and defaults)."""
        if self.fit_plan is not None and self in self.fit_plan:
            return self.fit_plan.window_of(self)
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
        total = self.fit_plan.total_steps if self.fit_plan is not None else 0
        start, end = self.window
        return round(start * total), round(end * total)

    def window_ended_mid_fit(self, trainer: pl.Trainer) -> bool:
        """Whether this window ends before the fit does and its last step has been reached."""
        return self.window[1] < 1.0 and trainer.global_step >= self.window_steps()[1]

    def steps_in_window(self, count: int, final_fraction: float) -> list[int]:
        """``count`` steps spread over the window (:func:`~.plan.spread_steps`)."""
        return spread_steps(*self.window_steps(), count, final_fraction)

    def planned_events(self, window: tuple[float, float], steps: tuple[int, int] | None) -> str:
        """What it will do inside ``window`` (``steps`` when known), in a few words (the fit plan's table)."""
        return ""

    def guard_summary(self) -> str:
        """What guards its accuracy, in a few words (the fit plan's table)."""
        return "none"

    def event_decision(self, event: str, remaining: int, latest: bool = False) -> str:
        """Whether the next optional ``event`` fits the event budget: ``"run"``, ``"skip"`` or ``"stop"``."""
        return self.event_budget.decide_for(self, event, remaining, getattr(self.fit_plan, "total_steps", 0), latest)

    def budget_spent_reason(self, event: str) -> str:
        """Why the events stopped when the budget ended, in words."""
        return self.event_budget.spent_reason(self, event, self.fit_plan.total_steps if self.fit_plan else 0)

    # -- claims ----------------------------------------------------------------------------------------------------
    @staticmethod
    def representation(pl_module: nn.Module) -> Representation:
        """The representation of the compressed module (claims of every callback)."""
        return representation_of(artifact_module(pl_module))

    def claim(self, pl_module: nn.Module, aspect: str, names: Iterable[str], kind: str) -> None:
        """Claim ``aspect`` of the named tensors (refused with both owners named if another callback holds it)."""
        self.representation(pl_module).claim(self.owner, aspect, names, kind)

    def check_composition(self, trainer: pl.Trainer, pl_module: nn.Module) -> None:
        """Refuse windows that overlap or run out of aspect order on shared tensors (before the first step)."""
        fit_plan = self.fit_plan if self.fit_plan is not None else FitPlan.of(compression_callbacks(trainer))
        fit_plan.check_composition(self.representation(pl_module))

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

    # -- Lightning's hooks, dispatched in the plan's order ------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Refuse strategies that shard parameters (FSDP, DeepSpeed); the leader builds the fit plan."""
        name = type(trainer.strategy).__name__
        if stage == "fit" and any(s.lower() in name.lower() for s in _SHARDING_STRATEGIES):
            raise ValueError(
                f"{type(self).__name__} reads and rewrites whole parameter tensors, which the {name} strategy shards "
                "across processes; use strategy='ddp' (or a single device)."
            )
        if stage == "fit":
            callbacks = compression_callbacks(trainer)
            owners = [cb.owner for cb in callbacks]
            if owners.count(self.owner) > 1:
                raise CompositionError(
                    f"{owners.count(self.owner)} {self.owner} callbacks in one fit: give one instance the tensors it "
                    "should compress (`parameters=` / `layers=`), or combine them into one."
                )
            if callbacks[0] is self or self.fit_plan is None or self not in self.fit_plan:
                fit_plan = FitPlan.of(callbacks, max_epochs=trainer.max_epochs, trainer=trainer)
                for cb in callbacks:  # one plan, built once, shared
                    cb.fit_plan = fit_plan
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
        if self.fit_plan is None:  # setup was not run through a Trainer (a direct hook call)
            self.fit_plan = FitPlan.of(compression_callbacks(trainer), trainer=trainer)
        self.fit_plan.total_steps = int(total) if math.isfinite(total) else 0  # the same value from every callback
        self.check_composition(trainer, pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # every callback's on_fit_start has claimed and checked: the plan is final
        if self._leads(trainer) and self.fit_plan is not None and not self.should_skip(trainer):
            steps = self.fit_plan.total_steps
            rank_zero_info(f"lightning_compress fit plan ({steps:,} optimizer steps):\n{self.fit_plan}")

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.event_budget.step_started()
        if self._leads(trainer):
            self.step_hooks.ensure(trainer.optimizers, lambda: self._put_holds_back(trainer, pl_module))
            if not self.should_skip(trainer):
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
        if self.holds and held_gradients_matter(optimizer, clips_gradients(trainer, pl_module)):
            self.holds.mask_gradients(self.target_module(pl_module))

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.event_budget.step_ended()
        if self._leads(trainer):
            callbacks = self._in_order(trainer)
            if not self.step_hooks:  # no optimizer hook (a step outside Lightning's loop): put the holds back here
                self._put_holds_back(trainer, pl_module)
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
            # training step after it to update them); a fit in which nothing was compressed keeps its own statistics
            compressed = [cb.owner for cb in callbacks if cb.compressed]
            if compressed:
                self.recalibrate_norms(trainer, pl_module, " and ".join(compressed))

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.step_hooks.remove()
            self.release_fit_state()

    def release_fit_state(self) -> None:
        """Drop what only the fit needed (masks, held values, snapshots).

        The weights and the representation carry the result; a callback kept after ``fit`` holds no model copy.
        """
        self.holds.release()
        self.guard_snapshot = None

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

    @property
    def compressed(self) -> bool:
        """Whether this callback changed the model in this fit (the end of fit re-estimates BatchNorm only then)."""
        return True

    @property
    def guarding(self) -> bool:
        """Whether an accuracy guard of this callback watches validations now (they must see true accuracy)."""
        return False

    # -- shared pieces, bound to this callback ------------------------------------------------------------------
    def _put_holds_back(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for cb in self._in_order(trainer):
            cb.apply_holds(pl_module)

    def apply_holds(self, pl_module: nn.Module) -> None:
        """Re-apply this callback's masks and frozen values to the compressed module."""
        self.holds.apply(self.target_module(pl_module))

    @compression_event("norm_calibration")
    def recalibrate_norms(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, who: str, quiet: bool = False
    ) -> None:
        """Re-estimate the BatchNorm statistics on training batches (after ``who`` replaced weights)."""
        read = calibration.recalibrate_norms(
            trainer, self.target_module(pl_module), self.forward_inputs_fn(pl_module), who
        )
        if read and not quiet:
            rank_zero_info(
                f"{who} finished: the BatchNorm running statistics were re-estimated on {read} training batches, so "
                "that they describe the final weights."
            )

    def forward_inputs_fn(self, pl_module: nn.Module) -> ForwardInputs:
        """How a batch becomes the forward's arguments (:func:`~.calibration.resolve_forward_inputs`)."""
        return calibration.resolve_forward_inputs(self.forward_inputs, pl_module)

    def training_inputs(
        self, trainer: pl.Trainer, pl_module: nn.Module, batches: int, who: str, shard: bool = False
    ) -> Iterator[Any]:
        """The forward's arguments for the first ``batches`` training batches (:func:`.calibration.training_inputs`)."""
        return calibration.training_inputs(trainer, self.forward_inputs_fn(pl_module), batches, who, shard)

    def check_forward(self, trainer: pl.Trainer, pl_module: nn.Module, who: str) -> Any:
        """Run the compressed module once before the first step (:func:`~.calibration.check_forward`)."""
        return calibration.check_forward(trainer, self.target_module(pl_module), self.forward_inputs_fn(pl_module), who)

    def rebuild_optimizers(self, trainer: pl.Trainer, change: Callable[[], KeptIndices] | None = None) -> None:
        """Run ``change`` (replacing parameters), then rebuild the optimizers (``reshape_parameters``)."""
        target = self.target_module(trainer.lightning_module)
        prefix = next((name for name, sub in trainer.lightning_module.named_modules() if sub is target), "")
        reshape_parameters(trainer, change or dict, prefix)

    @staticmethod
    def target_module(pl_module: nn.Module) -> nn.Module:
        """The module to compress (and that artifacts store)."""
        return artifact_module(pl_module)

    @staticmethod
    def should_skip(trainer: pl.Trainer) -> bool:
        """No compression during the sanity check, outside ``fit`` or under ``fast_dev_run``."""
        return should_skip(trainer)

    @staticmethod
    def broadcast(trainer: pl.Trainer, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (every rank must call this)."""
        return trainer.strategy.broadcast(obj, src=0)

    # -- logging ---------------------------------------------------------------------------------------------------
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
