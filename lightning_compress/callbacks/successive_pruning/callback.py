"""The SuccessivePruning callback: its arguments, when its stages run, its guards' bookkeeping and resuming.

SuRP (Isik, No, Weissman 2021/22): pruning by successive refinement in stages of increasing sparsity with masked
retraining between them, and a real entropy-coded bitstream (codec ``surp``) for the artifact. The stages and the
stream are in :mod:`.stages`; the refinement in ``functional.successive_pruning``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_compress.arguments import check_choice, check_number, check_parameters, is_number
from lightning_compress.callbacks.event_guard import EventGuard
from lightning_compress.callbacks.events import compression_event
from lightning_compress.callbacks.guard import (
    DEFAULT_ACCURACY_BUDGET,
    MetricGuard,
    guard_validation,
    require_validation,
)
from lightning_compress.callbacks.state import load_plain_state, plain_state
from lightning_compress.callbacks.successive_pruning.stages import SurpStages
from lightning_compress.callbacks.validation import validation_loader
from lightning_compress.functional.selection import select_parameters
from lightning_compress.functional.successive_pruning import (
    sparsity_schedule,
)

__all__ = ["SuccessivePruning"]


#: The sparsity SuccessivePruning() prunes towards when no target is given (guarded).
DEFAULT_TARGET_SPARSITY = 0.95
#: The fields a checkpoint holds as they are (key ``"stage"``: ``self._stage``).
_PLAIN_STATE = ("stage", "stage_steps", "step_cap", "stopped", "stop_reason")


class SuccessivePruning(SurpStages):
    """Prune by successive refinement during ``fit``, and store the result as a SuRP bitstream.

    Stages of increasing sparsity (default the paper's ``1 - 0.8**k`` list up to ``target_sparsity``) are spread
    over the first ``1 - final_fraction`` of the callback's window (``start``-``end``, fractions of
    ``trainer.estimated_stepping_batches``; default the whole fit), so the target is reached before the end of any
    fit without tuning. At each stage the selected tensors are refined
    from scratch (per-tensor L2 normalisation, one vector, threshold ``alpha * mean``, quanta subtracted from the
    residual, threshold decay and refresh) until the stage's sparsity; the reconstruction replaces the weights and
    its zeros become the mask. Between stages the mask is enforced: gradients of pruned entries are zeroed in
    ``on_before_optimizer_step`` and the mask re-applied after every optimizer step, so momentum and weight decay
    cannot regrow them (biases and normalisation parameters included when selected).

    SuccessivePruning owns the **support** of its tensors (which entries are zero); the zeros stay until the end of
    ``fit``. It also owns their **values** unless a value method (Ternarization, WeightSharing) claims them: then
    that method works on the non-zeros and the artifact codes the support with it. The values it owns are refined
    once more at the end of ``fit`` (to the target, or to the support they have when some tensors went to a value
    method) and encoded; those are the final weights and what :func:`lightning_compress.save` writes with the
    ``surp`` codec.

    Refinement is vectorised (every candidate above the threshold in one round), runs in torch on the weights'
    device, and its decisions do not depend on the device (thresholds and norms come from fixed-order reductions):
    a pruning stage is computed on every rank from the same weights and writes no stream; the final stream is
    coded on rank 0 and broadcast (a few bytes per survivor), so every rank holds the same weights.

    **Guard** (the default). Added with no target (no ``target_sparsity``, ``bit_budget`` or ``stages``), it prunes
    towards 95% while every stage's own cost fits a 1-point budget
    (:class:`~lightning_compress.callbacks.event_guard.EventGuard`, ``guard="event"``): the model right before the
    stage against right after it, on the same cached validation samples, whatever the fit's validation schedule. A
    stage over budget is bisected between the sparsity before it and its target from the same weights (the training
    since the last stage is kept), later stages take steps no larger (twice as large after a whole step fits), and a
    stage with no step that fits is skipped (the next one tries again); the final stream keeps the support reached.
    One line at the end says where it stopped and why. A fit without validation data is refused before the first
    step (pass validation data, or a ``target_sparsity`` to prune that far unguarded). Measured against the former
    default in ``docs/defaults.md``: in short fits it prunes where that one pruned nothing; in longer ones it stops
    earlier (the immediate cost of a stage is judged, not what the retraining after it wins back).

    ``guard="validation"`` (the former default) compares a validation metric with its best instead (within 1 point;
    2% of the best for a loss; the metric found by name like NeuronElimination's): the first stage waits for a
    validation (the baseline), and a validation that falls further undoes every stage since the previous
    validation (weights and masks restored) and holds the sparsity there.

    Args:
        target_sparsity: final fraction of zeros among the selected tensors, in (0, 1); ``None`` (default): 0.95,
            guarded. Giving it (or ``bit_budget``/``stages``) turns the default guard off ("go as far as asked").
        bit_budget: alternative target: the final stream's size in bits (the target sparsity then follows from it).
        alpha: initial threshold factor (paper: 10 for ResNet-20, 13 for VGG-16).
        refresh: ``"ladder"`` (our design: decoder-computable threshold steps, a few bits each) or ``"mean"``
            (the authors' rule; every refreshed threshold is sent as a float64).
        ladder: threshold factor per ladder step.
        refine_steps: extra ladder steps after the target sparsity is reached that refine only the surviving
            weights (precision for bits; 0 stops at the target as the paper does, and measured best on LeNet).
        support_tolerance: a refinement may stop with up to this fraction of the target's non-zeros missing (the
            smallest ones; our design). The final re-encode starts from weights already at the target, and
            reaching every last tiny survivor takes rounds that refine all the others to a useless precision: on
            LeNet-300-100 at 98% sparsity 0.005 cut the stream by a fifth. 0 = exactly the target.
        parameters: ``"all"`` (paper: every parameter), ``"weights"`` (Conv/Linear weights only) or a list of
            parameter/module names.
        stages: explicit stage sparsities (increasing, the last one is the target); default the paper's list.
        final_fraction: fraction of the window after the last stage (fine-tuning at the target).
        accuracy_budget: what the stages may cost together on the event guard's samples (with
            ``guard="validation"``: the largest drop of ``monitor`` from its best before the stages since the last
            validation are undone); ``"auto"`` (default): 0.01 unless a target is given; ``None``: no guard.
        monitor: validation metric of ``guard="validation"``; ``None``: found by name at the first validation.
        mode: ``"max"`` or ``"min"`` for ``monitor``; ``None``: from its name.
        guard: ``"event"`` (each stage judged by its own cost on cached validation samples) or ``"validation"``
            (a validation metric against its best); ``None`` (default): ``"validation"`` when ``monitor`` is given,
            else ``"event"``.
        backoff_steps: with ``guard="event"``, bisection steps of a stage over budget (each one more pass over the
            guard's samples).
        start: where the window starts, as a fraction of the fit's optimizer steps (default 0, or after
            NeuronElimination's window when both are used).
        end: where it ends (default 1).

    Raises:
        ValueError: for an invalid argument (the message names it).

    Examples:
        >>> [round(s, 4) for s in SuccessivePruning(target_sparsity=0.9).stages[-3:]]
        [0.8658, 0.8926, 0.9]
    """

    LOG_PREFIX = "surp"
    PROGRESS_KEYS = ("stage", "sparsity")
    ASPECT = "support"

    def __init__(
        self,
        target_sparsity: float | None = None,
        bit_budget: int | None = None,
        alpha: float = 10.0,
        refresh: str = "ladder",
        ladder: float = 0.9,
        refine_steps: int = 0,
        support_tolerance: float = 0.005,
        parameters: str | Sequence[str] = "all",
        stages: Sequence[float] | None = None,
        final_fraction: float = 0.2,
        accuracy_budget: float | str | None = "auto",
        monitor: str | None = None,
        mode: str | None = None,
        guard: str | None = None,
        backoff_steps: int = 4,
        start: float | None = None,
        end: float | None = None,
    ) -> None:
        super().__init__(start=start, end=end)
        explicit = target_sparsity is not None or bit_budget is not None or stages is not None
        target_sparsity = DEFAULT_TARGET_SPARSITY if target_sparsity is None else target_sparsity
        check_number("target_sparsity", target_sparsity, low=0, high=1, low_open=True, high_open=True)
        if accuracy_budget != "auto":
            check_number("accuracy_budget", accuracy_budget, low=0, allow_none=True)
        if monitor is not None and (not isinstance(monitor, str) or not monitor):
            raise ValueError(f"`monitor` must be None (found automatically) or a metric name, got {monitor!r}.")
        check_choice("mode", mode, ("max", "min"), allow_none=True)
        check_choice("guard", guard, ("validation", "event"), allow_none=True)
        # naming the metric to watch asks for the guard that watches one
        guard = guard or ("validation" if monitor is not None else "event")
        check_number("backoff_steps", backoff_steps, low=0, integer=True)
        check_number("bit_budget", bit_budget, low=64, integer=True, allow_none=True)
        check_number("alpha", alpha, low=0, low_open=True)
        check_choice("refresh", refresh, ("ladder", "mean"))
        check_number("ladder", ladder, low=0, high=1, low_open=True, high_open=True)
        check_number("refine_steps", refine_steps, low=0, integer=True)
        check_number("support_tolerance", support_tolerance, low=0, high=1, high_open=True)
        check_parameters("parameters", parameters)
        check_number("final_fraction", final_fraction, low=0, high=1, high_open=True)
        if stages is not None and (
            isinstance(stages, str)
            or not isinstance(stages, Sequence)
            or not stages
            or not all(is_number(v) and 0 < v < 1 for v in stages)
            or sorted(stages) != list(stages)
        ):
            raise ValueError(f"`stages` must be None or increasing sparsities in (0, 1), got {stages!r}.")
        stage_list = [float(s) for s in stages] if stages is not None else sparsity_schedule(float(target_sparsity))
        self.target_sparsity = stage_list[-1] if stages is not None else float(target_sparsity)
        self.stages = stage_list
        self.bit_budget = bit_budget
        self.alpha = float(alpha)
        self.refresh = refresh
        self.ladder = float(ladder)
        self.refine_steps = refine_steps
        self.support_tolerance = float(support_tolerance)
        self.parameters = parameters if isinstance(parameters, str) else list(parameters)
        self.final_fraction = float(final_fraction)
        self.backoff_steps = int(backoff_steps)
        budget = (None if explicit else DEFAULT_ACCURACY_BUDGET) if accuracy_budget == "auto" else accuracy_budget
        #: the validation-metric guard (None: prune as far as asked, or the event guard judges instead)
        self.guard = (
            None
            if budget is None or guard != "validation"
            else MetricGuard(self.owner, float(budget), monitor, mode, default=accuracy_budget == "auto")
        )
        #: the guard that judges each stage by its own cost (``guard="event"``)
        self.event_guard = None if budget is None or guard != "event" else EventGuard(self.owner, float(budget))
        #: after a back-off, the largest step in sparsity a stage may take (the step that last fit)
        self._step_cap: float | None = None
        self._stopped = False
        self._stop_reason = ""
        self._stage = 0
        self._stage_steps: list[int] = []
        self._names: list[str] = []
        self._saved_masks: dict[str, torch.Tensor] = {}
        self._final: dict[str, Any] | None = None
        self.history: list[dict[str, float]] = []

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(target_sparsity=self.target_sparsity, parameters=str(self.parameters))

    # -- set-up ------------------------------------------------------------------------------------------------
    @override
    def planned_events(self, window: tuple[float, float], steps: tuple[int, int] | None) -> str:
        budget = f", stream within {self.bit_budget:g} bits/param" if self.bit_budget is not None else ""
        return f"{len(self.stages)} stages to sparsity {self.target_sparsity:g}{budget}; final stream at the end"

    @override
    def guard_summary(self) -> str:
        if self.event_guard is not None:
            return f"each stage's own cost, all within {self.event_guard.budget:g}"
        return "none (a target was given)" if self.guard is None else self.guard.summary()

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            self._names = [n for n, _ in select_parameters(self.target_module(pl_module), self.parameters)]
            self.claim(pl_module, "support", self._names, kind="surp")

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        rep = self.representation(pl_module)
        # the values nobody else claimed are SuRP's own: refined and stored in its stream
        self.claim(
            pl_module, "values", [n for n in self._names if rep.owner(n, "values") in (None, self.owner)], "surp"
        )
        instead = "`target_sparsity=` (or `bit_budget=`) to prune that far"
        require_validation(self.owner, trainer, pl_module, self.guard, "its sparsity", instead)
        if self.event_guard is not None and not self.should_skip(trainer) and validation_loader(trainer) is None:
            raise ValueError(
                "SuccessivePruning's accuracy guard judges each stage on validation samples, "
                "and this fit has no validation data (none given to `fit`, or `limit_val_batches=0`). Pass validation "
                "data to `fit`, or give `target_sparsity=` (or `bit_budget=`) to prune that far unguarded."
            )
        if not self._stage_steps:
            self._stage_steps = self.steps_in_window(len(self.stages), self.final_fraction)
        if self._saved_masks:  # resumed: masks from the checkpoint
            self.holds.hold_support(self.target_module(pl_module), self._saved_masks)
            self._saved_masks = {}
        if self._final is not None:
            self._attach(pl_module)

    @override
    def act(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._stopped:
            return
        if self.guard is not None or self.event_guard is not None:
            due = [i for i in range(self._stage, len(self.stages)) if trainer.global_step >= self._stage_steps[i]]
            if not due or (self.guard is not None and self.guard.best is None):  # waits for the baseline validation
                return
            # stages due at one step are merged into the latest (each stage refines from scratch anyway)
            self._stage = due[-1]
            if self.event_guard is not None:
                if not self.event_guard.ready:
                    self._cache_guard_samples(trainer)
                # a guarded stage costs passes over the guard's samples: where they would take the events past their
                # budget, a later stage takes this one's sparsity (skip), or the sparsity is held (stop)
                decision = self.broadcast(trainer, self.event_decision("stage", len(self.stages) - self._stage))
                if decision == "stop":
                    self._stopped = True
                    self._stop_reason = self.budget_spent_reason("stage")
                    rank_zero_info(
                        f"SuccessivePruning holds sparsity {self._sparsity(pl_module):.4f}: {self._stop_reason}."
                    )
                elif decision == "run":
                    self._guarded_stage(trainer, self.stages[self._stage])
                self._stage += 1
                return
            self._run_stage(trainer, self.stages[self._stage])
            self._stage += 1
            return
        while self._stage < len(self.stages) and trainer.global_step >= self._stage_steps[self._stage]:
            self._run_stage(trainer, self.stages[self._stage])
            self._stage += 1

    @compression_event("guard_samples")
    def _cache_guard_samples(self, trainer: pl.Trainer) -> None:
        """The event guard's samples, cached once per fit in an event of their own: the stages are priced without it."""
        if self.event_guard is not None and trainer.is_global_zero:
            pl_module = trainer.lightning_module
            self.event_guard.prepare(trainer, pl_module, self.forward_inputs_fn(pl_module))

    # -- the accuracy guards ---------------------------------------------------------------------------------------
    @override
    @compression_event("validation_check")
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.guard is None or self._stopped or self._final is not None:
            return
        stop = guard_validation(self, trainer, self.guard, self._stage, "stage", "`target_sparsity=`")
        if stop is not None:
            self._stop_reason, self._stage, warn = stop
            self._stopped = True
            if warn:
                rank_zero_warn(f"SuccessivePruning holds its sparsity: {self._stop_reason}.")
            else:
                rank_zero_info(f"SuccessivePruning: {self._stop_reason}; the sparsity is held there.")

    @property
    @override
    def compressed(self) -> bool:
        return bool(self.history)

    @property
    @override
    def guarding(self) -> bool:
        return self.guard is not None and not self._stopped and self._final is None

    @override
    def finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.guard is not None or self.event_guard is not None:
            self._finish_guarded(trainer, pl_module)
            return
        while self._stage < len(self.stages) - 1:  # fits too short for the schedule still reach the target
            self._run_stage(trainer, self.stages[self._stage])
            self._stage += 1
        value_names = self._value_names(pl_module)
        if not value_names:  # every value went to a value method: it stores them, with this support
            if self._stage < len(self.stages):
                self._run_stage(trainer, self.stages[self._stage])
            self._stage = len(self.stages)
            return
        self._stage = len(self.stages)
        budget = self.bit_budget is not None and value_names == self._names
        self._run_stage(trainer, None if budget else self.target_sparsity, final=True)

    def _finish_guarded(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Under the guard the final stream keeps the validated support: no unvalidated jump to the target."""
        if self._stage == 0 or not self.holds.support:  # nothing pruned: nothing to encode, tensors stay as they are
            skipped = self.event_guard.refusal_summary("stage") if self.event_guard is not None else ""
            self._stop_reason = self._stop_reason or (
                "no validation came before its stages were due to give the guard a baseline (validate more often, "
                "e.g. `val_check_interval`, or give `target_sparsity=`)"
                if self.guard is not None
                else f"no stage was taken: {skipped}"
                if skipped
                else "no stage was due in this fit (give `target_sparsity=`)"
            )
            rank_zero_info(f"SuccessivePruning pruned nothing: {self._stop_reason}.")
            self.holds.release()
            return
        held = self._sparsity(pl_module)
        if not self._stop_reason:
            # the validation guard runs whole stages: the last one ran or not; the event guard's steps may end short
            if self.event_guard is None:
                reached = self._stage >= len(self.stages)
                short = f"its last validated stage was {self._stage} of {len(self.stages)} when the fit ended"
            else:
                reached = held >= self.target_sparsity - 1e-3
                short = (
                    f"its window ended before its target ({self.target_sparsity:g}): after a back-off its steps were "
                    "limited to what fit"
                )
                skipped = self.event_guard.refusal_summary("stage")
                if skipped:
                    short += f"; {skipped}"
            self._stop_reason = f"it reached its target ({self.target_sparsity:g})" if reached else short
        if self.event_guard is not None:
            self.event_guard.release()
        if self._value_names(pl_module):
            self._run_stage(trainer, held, final=True)
        self._stage = max(self._stage, 1)
        rank_zero_info(f"SuccessivePruning stopped at sparsity {held:.4f}: {self._stop_reason}.")

    # -- state -------------------------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            **plain_state(self, _PLAIN_STATE),
            **self.holds.state(),
            "final_stream": None
            if self._final is None
            else torch.frombuffer(bytearray(self._final["stream"]), dtype=torch.uint8),
            "final_norms": None if self._final is None else list(self._final["norms"]),
            "final_names": None if self._final is None else list(self._final["names"]),
            "history": list(self.history),
            "guard": None if self.guard is None else self.guard.state_dict(),
            "spent": None if self.event_guard is None else self.event_guard.state_dict(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        load_plain_state(self, state_dict, _PLAIN_STATE)
        self._saved_masks = self.holds.masks_from_state(state_dict)
        stream = state_dict.get("final_stream")
        self._final = (
            None
            if stream is None
            else {
                "stream": stream.numpy().tobytes(),
                "norms": state_dict["final_norms"],
                "names": state_dict.get("final_names") or list(self._names),
            }
        )
        self.history = list(state_dict.get("history", []))
        if self.guard is not None and state_dict.get("guard") is not None:
            self.guard.load_state_dict(state_dict["guard"])
        if self.event_guard is not None:
            self.event_guard.load_state_dict(state_dict.get("spent"))
