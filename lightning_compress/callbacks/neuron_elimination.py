"""NeuronElimination callback.

Annealed elimination of neurons and channels whose activations are linearly dependent on the others, with their
contribution redistributed onto the survivors (Shah, Olivier, Raj 2020). The algorithms live in
:mod:`lightning_compress.functional.neuron_elimination`; this callback decides when, on which data and on which rank.

Over 450 lines: the class docstring is the method's user documentation (about 95 lines) and its 20 arguments take
about 100 lines of checks and state; the rest is the round schedule, the mid-fit shrink with optimizer rebuild, the
two guards (the event guard's back-off of a round, the validation guard's undo, kept as an option) and resuming.
The decisions and the surgery are in ``functional.neuron_elimination``, the table in ``report``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from rich.console import Console
from torch import nn
from typing_extensions import override

from lightning_compress.arguments import check_bool, check_choice, check_names, check_number
from lightning_compress.callbacks.base import CompressionCallback
from lightning_compress.callbacks.calibration import has_validation
from lightning_compress.callbacks.event_guard import EventCost, EventGuard, judge_event, over_budget
from lightning_compress.callbacks.events import compression_event
from lightning_compress.callbacks.guard import DEFAULT_ACCURACY_BUDGET, MetricGuard
from lightning_compress.callbacks.validation import validation_loader
from lightning_compress.codec.base import fp32_nbytes
from lightning_compress.functional.forward import ForwardInputs
from lightning_compress.functional.neuron_elimination import (
    LayerPair,
    RoundRecord,
    anneal_tolerance,
    collect_moments,
    compact_record,
    current_pairs,
    decide_round,
    elimination_masks,
    kept_indices,
    layer_floor,
    param_count,
    param_table,
    params_goal,
    redistribute_round_,
    shrink_,
    skipped_summary,
    trainable_pairs,
)
from lightning_compress.report import elimination_table
from lightning_compress.surgery import resize_to_state

__all__ = ["DEFAULT_ACCURACY_BUDGET", "DEFAULT_TOLERANCE", "NeuronElimination"]

#: The last round's tolerance when none is given.
DEFAULT_TOLERANCE = 0.05


class NeuronElimination(CompressionCallback):
    """Eliminate linearly dependent neurons during ``fit`` and shrink the layers at its end.

    **Layers.** At the start of ``fit`` the network is traced once (torch-pruning's dependency graph) and every
    Linear/Conv2d whose output channels reach exactly one Linear/Conv2d consumer through channel-wise operations
    (activations, BatchNorm, pooling, flatten) becomes a *pair*; channels coupled by residual additions, branches
    and grouped convolutions are left alone (logged with the reason).

    **Rounds.** ``rounds`` elimination rounds are spread over the first ``1 - final_fraction`` of the training steps.
    A round runs ``calibration_batches`` training batches through the network in eval mode, accumulates the mean and
    second moment of every consumer's input (post-activation; every spatial position is a row), sums them over
    ranks, and on rank 0 eliminates greedily across all layers the neuron with the smallest redundancy
    ``1 - R^2`` while it is at most the round's tolerance. The tolerance is annealed from ``start_tolerance``
    (only exactly dependent neurons: lossless) to ``tolerance`` on a geometric, linear or cosine schedule. Each
    eliminated neuron's consumer columns are redistributed onto the survivors with its regression coefficients
    (intercept into the consumer's bias). The decisions are broadcast, so every rank removes the same neurons.

    **Size target.** With ``target_params`` (a fraction of the model's parameters) the rounds also follow a
    geometric size schedule from the second round on, eliminating the most dependent neurons beyond the tolerance
    when needed, and stop at the target.

    **Accuracy guard.** On by default (1 point) unless ``tolerance`` or ``target_params`` is given. The default
    ``guard="event"`` judges every round by its own cost
    (:class:`~lightning_compress.callbacks.event_guard.EventGuard`): the model right before the round against right
    after it, on the same cached validation samples (BatchNorm statistics re-estimated for both), whatever the fit's
    validation schedule. A round over budget keeps only the same leading share of every layer's eliminations (in
    the order they were chosen), bisected to the largest share within budget, from the current weights: training is
    never thrown away. Later rounds eliminate at most what fit (twice that after a whole round fits), and annealing
    stops when no share fits. ``guard="validation"`` (the former default) compares a validation metric with its best
    after every validation that follows a round and undoes the rounds since the previous validation when it fell by
    more than the budget (each lossy round waits for a validation of the previous one). With
    ``removal="immediate"`` the validation guard judges. Without validation data (or, for ``guard="validation"``,
    without a validation metric) the default guard gives way to a loss-free rule: tolerances are capped at
    ``unguarded_tolerance``. One log line at the end says what was removed and why annealing stopped.

    **Removal.** With ``removal="mask"`` (default) shapes stay fixed during ``fit``: the removed neurons' producer
    rows, BatchNorm entries and consumer columns are zero, their gradients are masked before every optimizer step
    and the masks re-applied after it (parameter identity is kept, so optimizers, DDP and checkpoints stay valid);
    the layers are physically shrunk in ``on_train_end``. ``removal="immediate"`` shrinks after every round and
    rebuilds the optimizers (single device only; optimizer moments restart, the LR scheduler keeps its progress).

    The removal history (per round: the neurons eliminated in every layer and their scores) is plain data in
    :meth:`state_dict`; the redistribution itself lives in the consumers' weights, so a checkpoint's weights and this
    history resume the run exactly. The regression coefficients are not kept: on a ResNet-50 they would be 7% of the
    model's bytes, held for the whole fit and written into every checkpoint, for no decision
    (:func:`~lightning_compress.functional.neuron_elimination.eliminate_dependent` returns them, for
    :func:`~lightning_compress.functional.neuron_elimination.replay_`).

    Args:
        tolerance: the last round's tolerance on the score; ``None`` = 0.05. Giving it turns the default guard off.
        start_tolerance: the first round's tolerance (near 0: only exactly dependent neurons go).
        schedule: ``"geometric"``, ``"linear"`` or ``"cosine"`` relaxation from start to end.
        rounds: number of elimination rounds.
        score: ``"output"`` (default; our design): weight-aware, the fraction of the consumer's pre-activation
            variance the elimination loses, ``r_j ||W_j||^2 / tr(W Sigma W^T)``; ``"r2"``: the redundancy
            ``1 - R^2`` (scale-free, blind to how much the consumer uses the neuron). The tolerances apply to it.
        target_params: optional fraction of the model's parameters to keep, in (0, 1). Giving it turns the default
            guard off.
        accuracy_budget: what the rounds may cost together on the event guard's samples (with
            ``guard="validation"``: the largest drop of ``monitor`` from its best before the rounds since the last
            validation are undone); ``"auto"`` (default): 0.01 (for ``guard="validation"``, 2% of the best of a
            loss-like metric) unless ``tolerance`` or ``target_params`` is given; ``None``: no guard.
        monitor: validation metric of ``guard="validation"``; ``None``: the first logged metric with ``val`` in its
            name, accuracy-like names first.
        mode: ``"max"`` (accuracy-like) or ``"min"`` (loss-like) for ``monitor``; ``None``: from its name.
        guard: ``"event"`` (each round judged by its own cost on cached validation samples) or ``"validation"``
            (a validation metric against its best); ``None`` (default): ``"validation"`` when ``monitor`` is given,
            else ``"event"``.
        backoff_steps: with ``guard="event"``, bisection steps of a round over budget (each one more pass over the
            guard's samples).
        layers: restrict to these producer module names (relative to the compressed module).
        calibration_batches: training batches per round for the statistics; ``None`` (default) reads batches until
            every layer has ``4 * min_rows_per_neuron`` rows per neuron (at most one pass over the training data).
        min_rows_per_neuron: a layer with fewer calibration rows per neuron is skipped with a warning (with too
            few rows every neuron looks dependent).
        min_neurons: neurons kept at least in every layer.
        min_layer_fraction: share of each layer's original neurons kept at least (default 0.1), so a size target
            never cuts one layer to a sliver; a target the floors do not allow is announced before the first step,
            and annealing stops at the floors.
        ridge: diagonal ridge of the Gram matrices, relative to their mean diagonal.
        removal: ``"mask"`` or ``"immediate"`` (see above).
        final_fraction: fraction of the window after the last round (fine-tuning under the masks).
        start: where the window starts, as a fraction of the fit's optimizer steps (default 0).
        end: where it ends (default 1; 0.5 when other compression callbacks follow). When it ends before the fit
            does, the layers are shrunk there and the optimizers built again (the LR schedulers keep their
            progress; under DDP the model is wrapped again), so the methods that follow work on the smaller layers.
        unguarded_tolerance: the tolerance cap of the loss-free rule that replaces the default guard when the fit
            has no validation metric.
        forward_inputs: a function from a training batch to the forward's arguments (a tensor, a tuple or a dict),
            for calibration; default: the LightningModule's ``lc_forward_inputs(batch)`` if defined, else
            ``batch[0]``.
        verbose: print a summary table at the end of ``fit``.

    Raises:
        ValueError: for an invalid argument (the message names it).

    Examples:
        >>> cb = NeuronElimination(rounds=5)
        >>> [f"{t:.0e}" for t in cb.tolerances]
        ['1e-06', '1e-05', '2e-04', '3e-03', '5e-02']
    """

    LOG_PREFIX = "neuron_elimination"
    PROGRESS_KEYS = ("round", "params_fraction")
    ASPECT = "structure"

    def __init__(
        self,
        tolerance: float | None = None,
        start_tolerance: float = 1e-6,
        schedule: str = "geometric",
        rounds: int = 10,
        score: str = "output",
        target_params: float | None = None,
        accuracy_budget: float | str | None = "auto",
        monitor: str | None = None,
        mode: str | None = None,
        guard: str | None = None,
        backoff_steps: int = 4,
        layers: Sequence[str] | None = None,
        calibration_batches: int | None = None,
        min_rows_per_neuron: int = 10,
        min_neurons: int = 1,
        min_layer_fraction: float = 0.1,
        ridge: float = 1e-10,
        removal: str = "mask",
        final_fraction: float = 0.2,
        unguarded_tolerance: float = 1e-3,
        forward_inputs: ForwardInputs | None = None,
        verbose: bool = True,
        start: float | None = None,
        end: float | None = None,
    ) -> None:
        super().__init__(forward_inputs, start=start, end=end)
        # "Go as far as asked": an explicit size target or tolerance is not held back by the default guard.
        explicit = target_params is not None or tolerance is not None
        tolerance = DEFAULT_TOLERANCE if tolerance is None else tolerance
        check_number("tolerance", tolerance, low=0, high=1)
        check_number("start_tolerance", start_tolerance, low=0, high=tolerance)
        check_choice("schedule", schedule, ("geometric", "linear", "cosine"))
        if schedule == "geometric":
            check_number("start_tolerance", start_tolerance, low=0, low_open=True, high=tolerance)
        check_number("rounds", rounds, low=1, integer=True)
        check_choice("score", score, ("r2", "output"))
        check_number("target_params", target_params, low=0, high=1, low_open=True, high_open=True, allow_none=True)
        if accuracy_budget != "auto":
            check_number("accuracy_budget", accuracy_budget, low=0, allow_none=True)
        if monitor is not None and (not isinstance(monitor, str) or not monitor):
            raise ValueError(f"`monitor` must be None (found automatically) or a metric name, got {monitor!r}.")
        check_choice("mode", mode, ("max", "min"), allow_none=True)
        check_choice("guard", guard, ("validation", "event"), allow_none=True)
        # naming the metric to watch asks for the guard that watches one
        guard = guard or ("validation" if monitor is not None else "event")
        check_number("backoff_steps", backoff_steps, low=0, integer=True)
        check_number("unguarded_tolerance", unguarded_tolerance, low=0, low_open=True, high=1)
        check_names("layers", layers)
        check_number("calibration_batches", calibration_batches, low=1, integer=True, allow_none=True)
        check_number("min_rows_per_neuron", min_rows_per_neuron, low=1, integer=True)
        check_number("min_neurons", min_neurons, low=1, integer=True)
        check_number("min_layer_fraction", min_layer_fraction, low=0, high=1, high_open=True)
        check_number("ridge", ridge, low=0, high=1, high_open=True)
        check_choice("removal", removal, ("mask", "immediate"))
        check_number("final_fraction", final_fraction, low=0, high=1, high_open=True)
        check_bool("verbose", verbose)
        self.tolerance = float(tolerance)
        self.start_tolerance = float(start_tolerance)
        self.schedule = schedule
        self.rounds = rounds
        self.score = score
        self.tolerances = anneal_tolerance(self.start_tolerance, self.tolerance, rounds, schedule)
        self.target_params = None if target_params is None else float(target_params)
        #: None: no guard; a number: the guard's budget; resolved from "auto" here (on unless the call asked for a size)
        self.accuracy_budget: float | None
        if accuracy_budget == "auto":
            self.accuracy_budget = None if explicit else DEFAULT_ACCURACY_BUDGET
        else:
            self.accuracy_budget = None if accuracy_budget is None else float(accuracy_budget)
        self.guard_is_default = accuracy_budget == "auto" and not explicit
        #: the metric the rounds are judged on, its mode and best value (plain data; found at the first validation)
        self.guard = MetricGuard(
            "NeuronElimination", self.accuracy_budget or 0.0, monitor, mode, default=self.guard_is_default
        )
        #: the guard that judges each round by its own cost (``guard="event"``; the validation guard judges the
        #: layers shrunk after every round, ``removal="immediate"``)
        self.event_guard = (
            EventGuard("NeuronElimination", self.accuracy_budget)
            if self.accuracy_budget is not None and guard == "event" and removal == "mask"
            else None
        )
        self.backoff_steps = int(backoff_steps)
        #: after a back-off: the most eliminations a round may make (doubled after a whole round fits)
        self._elimination_cap: int | None = None
        self.unguarded_tolerance = float(unguarded_tolerance)
        self.layers = None if layers is None else list(layers)
        self.calibration_batches = calibration_batches
        self.min_rows_per_neuron = min_rows_per_neuron
        self.min_neurons = min_neurons
        self.min_layer_fraction = float(min_layer_fraction)
        self.ridge = float(ridge)
        self.removal = removal
        self.final_fraction = float(final_fraction)
        self.verbose = verbose
        # state (plain data; see state_dict)
        self.pairs: list[LayerPair] = []
        self.history: list[dict[str, Any]] = []
        self.skipped: dict[str, str] = {}
        self._round = 0
        self._round_steps: list[int] = []
        self._stopped = False
        self._finished = False
        #: the step where the window's end shrank the layers mid-fit (None: at the end of fit, or not yet)
        self._shrunk_at: int | None = None
        self._stop_reason = ""
        self._capped = False
        self._monitor_resolved = False
        self._validated = False
        self._dense_params = 0
        self._dense_fp32_bytes = 0
        self._original_shapes: dict[str, list[int]] = {}
        self._table: list[tuple[int, int | None, int | None]] = []
        # runtime only
        self._warned_rows: set[str] = set()
        self._resize_hook: Any = None

    @property
    def monitor(self) -> str | None:
        """The validation metric the guard watches (``None`` until found at the first validation)."""
        return self.guard.monitor

    @property
    def mode(self) -> str | None:
        """``"max"`` or ``"min"`` for :attr:`monitor`."""
        return self.guard.mode

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(tolerance=self.tolerance, target_params=self.target_params)

    @override
    def planned_events(self, window: tuple[float, float], steps: tuple[int, int] | None) -> str:
        size = f", to {self.target_params:g} of the params" if self.target_params is not None else ""
        shrink = "shrink at the end of the fit"
        if window[1] < 1.0:
            shrink = f"shrink at step {steps[1]}" if steps is not None else f"shrink at {window[1]:g} of the fit"
        return f"{self.rounds} rounds, tolerance {self.start_tolerance:.0e} to {self.tolerance:g}{size}; {shrink}"

    @override
    def guard_summary(self) -> str:
        if self.accuracy_budget is None:
            return "none (a target was given)"
        if self.event_guard is not None:
            return f"each round's own cost, all within {self.event_guard.budget:g}"
        return self.guard.summary()

    # -- bookkeeping ---------------------------------------------------------------------------------------------
    def removed(self) -> list[list[int]]:
        """Original indices of the removed neurons of every pair, in elimination order."""
        removed: list[list[int]] = [[] for _ in self.pairs]
        for entry in self.history:
            for record in entry["records"]:
                removed[record["pair"]].extend(int(n) for n in record["neurons"].tolist())
        return removed

    def alive(self) -> list[list[int]]:
        """Original indices of the surviving neurons of every pair (ascending)."""
        return [sorted(set(range(p.channels)) - set(gone)) for p, gone in zip(self.pairs, self.removed(), strict=True)]

    def _refresh_masks(self, pl_module: nn.Module) -> None:
        """Hold the removed neurons' entries at zero (mask removal), by tensor name."""
        if self.removal == "immediate" or self._finished:
            self.holds.release()
            return
        module = self.target_module(pl_module)
        self.holds.hold_support(module, elimination_masks(module, self.pairs, self.removed()))

    # -- set-up ------------------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        module = self.target_module(pl_module)
        kinds = (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)
        layers = [n for n, m in module.named_modules() if isinstance(m, kinds)]
        if self.layers is not None:
            layers = [n for n in layers if n in self.layers]
        self.claim(
            pl_module,
            "structure",
            [
                f"{n}.{p}" if n else p
                for n in layers
                for p, _ in module.get_submodule(n).named_parameters(recurse=False)
            ],
            kind="eliminate",
        )
        launcher = getattr(trainer.strategy, "launcher", None)
        if type(launcher).__name__ == "_MultiProcessingLauncher":
            raise ValueError(
                "NeuronElimination shrinks layers at the end of fit, and a spawn-based strategy (e.g. 'ddp_spawn') "
                "cannot return the smaller model to the main process; use strategy='ddp'."
            )
        if self.removal == "immediate" and trainer.world_size > 1:
            raise ValueError(
                f"`removal`='immediate' rebuilds the optimizers and works on a single device; got world size "
                f"{trainer.world_size}. Use removal='mask'."
            )
        # resuming: the checkpoint may hold already smaller layers (immediate removal, or a window that ended before
        # the fit); give the model their shapes just before Lightning loads it (the path is not known in `setup`)
        if self._resize_hook is None:
            self._resize_hook = pl_module.register_load_state_dict_pre_hook(_resize_before_load)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        module = self.target_module(pl_module)
        rep = self.representation(pl_module)
        for name, shape in self._original_shapes.items():  # resumed: the shapes before any shrink
            rep.original_shapes.setdefault(name, tuple(shape))
        if self._finished and self._shrunk_at is not None:
            return  # resumed after the window ended mid-fit: the checkpoint holds the smaller layers already
        if self._finished:
            raise RuntimeError("This NeuronElimination already finished a fit; use a new instance for a new fit.")
        if (
            self.accuracy_budget is not None
            and not self.should_skip(trainer)
            and not has_validation(trainer, pl_module)
        ):
            if not self.guard_is_default:
                raise ValueError(
                    "NeuronElimination(accuracy_budget=...) watches a validation metric, but this fit has no "
                    "validation loop (no `validation_step`, no validation data, or `limit_val_batches=0`); pass "
                    "validation data to `fit`, or `accuracy_budget=None`."
                )
            self._unguarded("the fit has no validation loop")
        elif self.event_guard is not None and not self.should_skip(trainer) and validation_loader(trainer) is None:
            if not self.guard_is_default:
                raise ValueError(
                    "NeuronElimination(guard='event') judges each round on validation samples, but this fit has no "
                    "validation data; pass validation data to `fit`, or `accuracy_budget=None`."
                )
            self._unguarded("the fit has no validation data")
        if not self.pairs:
            example = self.check_forward(trainer, pl_module, "NeuronElimination")
            self.pairs, self.skipped = trainable_pairs(module, example, self.layers)
            if not self.pairs:
                raise ValueError(
                    f"NeuronElimination found no layer pair it can eliminate neurons from: "
                    f"{skipped_summary(self.skipped)}. A pair is a Linear/Conv2d whose outputs reach exactly one "
                    "Linear/Conv2d through channel-wise operations; pass `layers=` to name producers, or leave "
                    "NeuronElimination out of this fit."
                )
            self._dense_params = sum(p.numel() for p in module.parameters())
            self._dense_fp32_bytes = sum(fp32_nbytes(t.numel(), t.dtype) for t in module.state_dict().values())
            # the file's ratio is against these shapes, whichever module holding them is saved
            self._original_shapes = {n: list(t.shape) for n, t in module.state_dict().items()}
            for name, shape in self._original_shapes.items():
                rep.original_shapes.setdefault(name, tuple(shape))
            self._table = param_table(module, self.pairs)
            self._check_floors()
            self._claim_written(trainer, pl_module, module)
            rank_zero_info(
                f"NeuronElimination: {len(self.pairs)} layer pairs "
                f"({', '.join(f'{p.producer}->{p.consumer}' for p in self.pairs)}); skipped: {self.skipped}"
            )
        if not self._round_steps:
            self._round_steps = self.steps_in_window(self.rounds, self.final_fraction)
        self._refresh_masks(pl_module)

    def _check_floors(self) -> None:
        """Say before the first step when the per-layer floors keep the model above ``target_params``."""
        if self.target_params is None or not self.pairs:
            return
        floor = param_count(self._table, self.pairs, [self._floor(p) for p in self.pairs])
        if floor > self.target_params * self._dense_params:
            rank_zero_warn(
                f"NeuronElimination: target_params={self.target_params} is out of reach above the per-layer floors "
                f"(min_layer_fraction={self.min_layer_fraction}, min_neurons={self.min_neurons}): at the floors the "
                f"model keeps {floor / max(self._dense_params, 1):.1%} of its parameters, and annealing will stop "
                "there. Lower `min_layer_fraction` to go further."
            )

    def _unguarded(self, why: str) -> None:
        """No metric to guard with: the default guard gives way to a loss-free rule, a low tolerance."""
        self.accuracy_budget = None
        self.event_guard = None
        self._capped = True
        self._cap_tolerances()
        rank_zero_info(
            f"NeuronElimination: {why}, so its default accuracy guard cannot run; it eliminates only neurons whose "
            f"score is at most `unguarded_tolerance`={self.unguarded_tolerance:g} (loss-free rule). Pass `monitor=` "
            "for a guard, or `tolerance=` / `target_params=` to go further."
        )

    def _cap_tolerances(self) -> None:
        self.tolerances = [min(t, self.unguarded_tolerance) for t in self.tolerances]

    # -- training steps --------------------------------------------------------------------------------------------
    @override
    def act(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._finished:
            return
        if self.window_ended_mid_fit(trainer):  # shrink now: the methods that follow work on the smaller layers
            self._finish_structure(trainer, pl_module, rebuild=True)
            return
        if self.event_guard is not None and self.accuracy_budget is not None:
            due = [i for i in range(self._round, self.rounds) if trainer.global_step >= self._round_steps[i]]
            if due and not self._stopped:
                # rounds due at one step are merged into the latest (its tolerance and size goal)
                self._round = due[-1]
                # where one more guarded round would take the events past their budget, a later round takes this
                # one's place (its tolerance and size goal are larger: skip), or the neurons are held (stop)
                decision = self.broadcast(trainer, self.event_decision("round", self.rounds - self._round))
                if decision == "stop":
                    self._stopped = True
                    self._stop_reason = self.budget_spent_reason("round")
                    rank_zero_info(f"NeuronElimination holds its neurons: {self._stop_reason}.")
                elif decision == "run":
                    self._guarded_round(trainer, pl_module)
                self._round += 1
            return
        guarded = self.accuracy_budget is not None
        while not self._stopped and self._round < self.rounds and trainer.global_step >= self._round_steps[self._round]:
            if guarded and self._round > 0 and not self._validated:
                # Each lossy round waits for a validation after the previous one (the first sets the baseline): the
                # guard then judges every round alone, and an undo costs one round, not several.
                break
            if guarded and self._round > 0:
                # rounds that waited for a validation are merged into the latest one due (its tolerance and size
                # goal): a short fit with few validations still anneals as far as its position in the window
                due = [i for i in range(self._round, self.rounds) if trainer.global_step >= self._round_steps[i]]
                self._round = due[-1]
            self._run_round(trainer, pl_module)
            self._round += 1
            if guarded:
                if self._round > 1:  # a lossy round: the next one waits for a validation of this one
                    self._validated = False
                break

    # -- rounds --------------------------------------------------------------------------------------------------
    def _params_goal(self) -> tuple[int | None, int | None]:
        """(goal of this round, final target) in parameters, or (None, None) without a size target."""
        return params_goal(self._dense_params, self.target_params, self._round, self.rounds)

    def _decide(self, trainer: pl.Trainer, pl_module: pl.LightningModule, module: nn.Module) -> list[RoundRecord]:
        """Statistics on every rank (summed), eliminations decided on rank 0 and broadcast."""
        alive = self.alive()
        batches = self.calibration_batches
        # each rank reads its own share of the batches; the statistics are summed over ranks below
        inputs = self.training_inputs(
            trainer, pl_module, batches if batches is not None else 2**62, "NeuronElimination", shard=True
        )
        rows = None if batches is not None else math.ceil(4 * self.min_rows_per_neuron / max(trainer.world_size, 1))
        moments = collect_moments(module, self._current_pairs(alive), inputs, rows_per_neuron=rows)
        for pair, moment in zip(self.pairs, moments, strict=True):
            if trainer.world_size > 1:  # one process: no packed copy of the outer products to sum
                moment.load_tensor(trainer.strategy.reduce(moment.as_tensor(), reduce_op="sum"))
            finite = bool(torch.isfinite(moment.total).all()) and bool(torch.isfinite(moment.outer).all())
            if not finite:
                raise FloatingPointError(
                    f"NeuronElimination: the calibration statistics of {pair.producer}'s outputs hold NaN or Inf (the "
                    "model has diverged, or its inputs do); nothing was eliminated. Lower the learning rate or check "
                    "the data."
                )
        decided: list[dict[str, Any]] | None = None
        if trainer.is_global_zero:
            goal, target = self._params_goal()
            records = decide_round(
                module,
                self.pairs,
                moments,
                alive,
                table=self._table,
                tolerance=self.tolerances[self._round],
                goal=goal,
                target=target,
                floors=[self._floor(p) for p in self.pairs],
                score=self.score,
                ridge=self.ridge,
                shrunk=self.removal == "immediate",
                min_rows_per_neuron=self.min_rows_per_neuron,
                on_short_rows=self._warn_rows,
            )
            decided = [record.to_dict() for record in records]
        decided = self.broadcast(trainer, decided)
        assert decided is not None  # noqa: S101 - broadcast returns rank 0's value
        return [RoundRecord.from_dict(d) for d in decided]

    @property
    @override
    def compressed(self) -> bool:
        return any(self.removed())

    @property
    @override
    def guarding(self) -> bool:
        # the event guard reads its own samples: validations need no special treatment for it
        watching = self.accuracy_budget is not None and self.event_guard is None
        return watching and not self._finished and not self._stopped

    def _written_layers(self) -> set[str]:
        """Every module a round rewrites: producers, their norms, consumers."""
        return {name for pair in self.pairs for name in (pair.producer, pair.consumer, *pair.norms)}

    def _claim_written(self, trainer: pl.Trainer, pl_module: pl.LightningModule, module: nn.Module) -> None:
        """Claim the structure of everything the pairs rewrite, then check the windows again (before any step)."""
        written = self._written_layers()
        names = [n for n, _ in module.named_parameters() if n.rpartition(".")[0] in written]
        self.claim(pl_module, "structure", names, kind="eliminate")
        self.check_composition(trainer, pl_module)

    def _floor(self, pair: LayerPair) -> int:
        return layer_floor(pair, self.min_neurons, self.min_layer_fraction)

    def _current_pairs(self, alive: list[list[int]]) -> list[LayerPair]:
        return current_pairs(self.pairs, alive, shrunk=self.removal == "immediate")

    def _warn_rows(self, pair: LayerPair, shortfall: str) -> None:
        if pair.producer not in self._warned_rows:
            self._warned_rows.add(pair.producer)
            rank_zero_warn(f"NeuronElimination skips a layer. {shortfall} Raise `calibration_batches`.")

    @compression_event("round")
    def _run_round(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        module = self.target_module(pl_module)
        if self.accuracy_budget is not None and self.guard_snapshot is None:
            self.guard_snapshot = {
                "history": len(self.history),
                # only what a round writes (producers, norms, consumers): an undo leaves other methods' work alone
                "state": {
                    k: v.detach().to("cpu", copy=True)
                    for k, v in module.state_dict().items()
                    if k.rpartition(".")[0] in self._written_layers()
                },
            }
        alive_before = self.alive()
        records = self._decide(trainer, pl_module, module)
        self._apply_round(trainer, pl_module, records, alive_before)

    def _redistribute(
        self, trainer: pl.Trainer, pl_module: nn.Module, records: list[RoundRecord], alive_before: list[list[int]]
    ) -> None:
        """Redistribute ``records`` into the consumers, add them to the history and hold the removed neurons."""
        module = self.target_module(pl_module)
        redistribute_round_(module, self.pairs, records, alive_before, shrunk=self.removal == "immediate")
        self.history.append(
            {
                "round": self._round,
                "step": int(trainer.global_step),
                "tolerance": self.tolerances[self._round],
                "records": [compact_record(r) for r in records if r.eliminations],
            }
        )
        if self.removal == "immediate":
            self._shrink_round(trainer, module, alive_before, records)
        self._refresh_masks(pl_module)

    def _apply_round(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        records: list[RoundRecord],
        alive_before: list[list[int]],
        cost: EventCost | None = None,
    ) -> None:
        """Apply a round's (possibly backed-off) eliminations, log it and stop at the size target."""
        self._redistribute(trainer, pl_module, records, alive_before)
        eliminated = sum(len(r.eliminations) for r in records)
        self.changed_weights = self.changed_weights or eliminated > 0
        scores = [e.score for r in records for e in r.eliminations]
        counts = [len(a) for a in self.alive()]
        params = param_count(self._table, self.pairs, counts)
        figures: dict[str, float] = {
            "round": float(self._round + 1),
            "tolerance": self.tolerances[self._round],
            "eliminated": float(eliminated),
            "largest_residual": max(scores) if scores else 0.0,
            "params": float(params),
            "params_fraction": params / max(self._dense_params, 1),
        }
        for pair, n in zip(self.pairs, counts, strict=True):
            figures[f"neurons/{pair.producer}"] = float(n)
        metric = trainer.callback_metrics.get(self.monitor) if self.monitor is not None else None
        if metric is not None:
            figures["val_metric"] = float(metric)
        judged = ""
        if cost is not None:
            figures.update(round_cost=cost.drop, round_cost_se=cost.se)
            judged = f", cost {cost} on the guard's samples"
        self.history[-1]["figures"] = figures
        self.log_figures(trainer, figures)
        rank_zero_info(
            f"NeuronElimination round {self._round + 1}/{self.rounds} (tolerance {self.tolerances[self._round]:.2e}): "
            f"{eliminated} neurons eliminated, {params:,} parameters ({figures['params_fraction']:.2%}), widths "
            f"{counts}{judged}."
        )
        _, target = self._params_goal()
        if target is not None and params <= target:
            self._stopped = True
            self._stop_reason = f"it reached target_params={self.target_params}"
            rank_zero_info("NeuronElimination reached `target_params`; annealing stops.")

    @staticmethod
    def _leading(records: list[RoundRecord], share: float) -> list[RoundRecord]:
        """The same leading ``share`` of every pair's eliminations, in the order they were chosen.

        A leading part of a greedy round is itself a valid round: each elimination's survivors are the neurons alive
        when it was chosen, and the ones chosen after it only add to the redistributed columns. A share above 0
        keeps at least one elimination (the largest record's first).
        """
        counts = [math.floor(share * len(r.eliminations) + 1e-9) for r in records]
        if share > 0 and records and not any(counts):
            counts[max(range(len(records)), key=lambda i: len(records[i].eliminations))] = 1
        return [RoundRecord(r.pair, r.eliminations[:n]) for r, n in zip(records, counts, strict=True)]

    @compression_event("round")
    def _guarded_round(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A round as large as the event guard allows: the whole round, or the largest leading share within budget.

        The share is bisected from the weights as they are now (the training since the last round is kept); with no
        share that fits, nothing is eliminated and annealing stops.
        """
        guard = self.event_guard
        assert guard is not None  # noqa: S101 - only under the event guard
        module = self.target_module(pl_module)
        alive_before = self.alive()
        records = self._decide(trainer, pl_module, module)
        total = sum(len(r.eliminations) for r in records)
        if total == 0:
            self._apply_round(trainer, pl_module, records, alive_before)
            return
        written = self._written_layers()
        saved = {k: v.detach().clone() for k, v in module.state_dict().items() if k.rpartition(".")[0] in written}
        saved_buffers = {n: b.detach().clone() for n, b in module.named_buffers()}
        rounds_before = len(self.history)

        @torch.no_grad()
        def restore() -> None:
            del self.history[rounds_before:]  # a trial's round leaves no trace
            module.load_state_dict(saved, strict=False)
            buffers = dict(module.named_buffers())
            for name, value in saved_buffers.items():
                buffers[name].copy_(value)
            self._refresh_masks(pl_module)

        def put(share: float) -> None:
            self._redistribute(trainer, pl_module, self._leading(records, share), alive_before)

        largest = 1.0 if self._elimination_cap is None else min(1.0, self._elimination_cap / total)
        chosen = judge_event(self, trainer, guard, put, restore, (0.0, largest), self.backoff_steps)
        share, cost = chosen.position, chosen.cost
        kept = self._leading(records, share)
        count = sum(len(r.eliminations) for r in kept)
        if count == 0:
            self._stopped = True
            self._stop_reason = over_budget(f"round {self._round + 1}'s smallest share tried", guard, cost)
            rank_zero_info(f"NeuronElimination holds its neurons: {self._stop_reason}.")
            return
        if count < total:  # backed off: later rounds eliminate no more than what fit
            self._elimination_cap = count
        elif self._elimination_cap is not None:
            self._elimination_cap *= 2
        guard.accept(cost)
        self._apply_round(trainer, pl_module, kept, alive_before, cost)

    def _shrink_round(
        self, trainer: pl.Trainer, module: nn.Module, alive_before: list[list[int]], records: list[RoundRecord]
    ) -> None:
        positions = [[] for _ in self.pairs]  # type: list[list[int]]
        for record in records:
            lookup = {orig: pos for pos, orig in enumerate(alive_before[record.pair])}
            positions[record.pair] = [lookup[e.neuron] for e in record.eliminations]
        current = self._current_pairs(alive_before)

        def change() -> dict[str, list[tuple[int, torch.Tensor]]]:
            kept = kept_indices(module, current, positions)
            shrink_(module, current, positions)
            return kept

        self.rebuild_optimizers(trainer, change)

    # -- accuracy budget -------------------------------------------------------------------------------------------
    @override
    @compression_event("validation_check")
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.accuracy_budget is None or self._finished or self.event_guard is not None:
            return
        # The sanity check's validation runs before the first step: the metric is found (or refused) there already.
        first = not self._monitor_resolved and (trainer.sanity_checking or not self.should_skip(trainer))
        if first:
            self._monitor_resolved = True
            if not self.guard.resolve(trainer.callback_metrics):
                self._unguarded(f"no validation metric was found among {sorted(trainer.callback_metrics)}")
                return
            relative = " of its best, relative" if self.guard.relative else ""
            rank_zero_info(
                f"NeuronElimination guards {self.monitor!r} ({self.mode}): a round that costs more than "
                f"{self.accuracy_budget:g}{relative} is undone."
            )
        if self.should_skip(trainer):
            return
        over, drop = self.guard.judge(trainer.callback_metrics)
        budget = self.guard.allowed_drop()
        undo = bool(self.broadcast(trainer, over and self.guard_snapshot is not None))
        if undo:
            assert self.guard_snapshot is not None  # noqa: S101 - undo implies a snapshot
            module = self.target_module(pl_module)
            state = self.guard_snapshot["state"]

            def restore() -> dict[str, list[tuple[int, torch.Tensor]]]:
                resize_to_state(module, state)
                module.load_state_dict(state, strict=False)
                return {}  # layers grow back: their optimizer state restarts

            if self.removal == "immediate":
                self.rebuild_optimizers(trainer, restore)
            else:
                module.load_state_dict(state, strict=False)
            undone = len(self.history) - self.guard_snapshot["history"]
            del self.history[self.guard_snapshot["history"] :]
            self._refresh_masks(pl_module)
            self._stopped = True
            self._stop_reason = (
                f"{self.monitor} fell {drop:.4g} below its best (budget {budget:.4g}); "
                f"the last {undone} round(s) were undone"
            )
            self.log_figures(trainer, {"undone_rounds": float(undone)})
            rank_zero_info(
                f"NeuronElimination: {self.monitor} fell {drop:.4f} below its best (budget "
                f"{self.accuracy_budget}); the last {undone} round(s) are undone and annealing stops."
            )
        self.guard_snapshot = None
        self._validated = True

    # -- end of the window -----------------------------------------------------------------------------------------
    @override
    def finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._finished:
            self._finish_structure(trainer, pl_module, rebuild=False)

    @compression_event("shrink")
    def _finish_structure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, rebuild: bool) -> None:
        """Shrink the layers to the surviving neurons (mask removal); ``rebuild``: the fit goes on after it."""
        if not self.pairs:
            self._finished = True
            return
        module = self.target_module(pl_module)
        if self.guard_snapshot is not None:
            self._stop_reason = self._stop_reason or "its window ended (the last round was kept without a validation)"
            self.guard_snapshot = None
        if self.event_guard is not None:
            self.event_guard.release()
        guard_waited = self.event_guard is None and self.guard.best is None
        if not self._stop_reason and self.accuracy_budget is not None and guard_waited:
            self._stop_reason = (
                "no validation ran during the fit to give its accuracy guard a baseline (validate more often, e.g. "
                "`check_val_every_n_epoch=1`, or pass `accuracy_budget=None`)"
            )
        if not self._stop_reason:
            self._stop_reason = (
                f"all {self.rounds} rounds ran (last tolerance {self.tolerances[-1]:.2g})"
                if self._round >= self.rounds
                else f"its window ended after {self._round} of {self.rounds} rounds"
            )
            at_floors = all(len(a) <= self._floor(p) for p, a in zip(self.pairs, self.alive(), strict=True))
            if self.target_params is not None and at_floors:
                self._stop_reason += (
                    f"; every layer reached its floor (min_layer_fraction={self.min_layer_fraction}) before "
                    f"target_params={self.target_params}"
                )
        if self.removal == "mask":
            self.apply_holds(pl_module)
            removed = self.removed()

            def change() -> dict[str, list[tuple[int, torch.Tensor]]]:
                kept = kept_indices(module, self.pairs, removed)
                requires_grad = {n: p.requires_grad for n, p in module.named_parameters()}
                shrink_(module, self.pairs, removed)
                for name, param in module.named_parameters():  # torch-pruning's new Parameters all train
                    param.requires_grad_(requires_grad.get(name, param.requires_grad))
                return kept

            if rebuild:
                self.rebuild_optimizers(trainer, change)
            else:
                change()
        self._finished = True
        self.holds.release()
        if rebuild:
            self._shrunk_at = int(trainer.global_step)
        params = sum(p.numel() for p in module.parameters())
        figures = {"final_params": float(params), "final_params_fraction": params / max(self._dense_params, 1)}
        figures["rounds_done"] = float(len(self.history))
        self.log_figures(trainer, figures)
        widths = ", ".join(
            f"{p.producer} {p.channels}->{len(a)}" for p, a in zip(self.pairs, self.alive(), strict=True)
        )
        rank_zero_info(
            f"NeuronElimination removed {sum(len(r) for r in self.removed())} neurons ({widths}), keeping "
            f"{figures['final_params_fraction']:.1%} of the parameters; it stopped because {self._stop_reason}."
        )
        if self.verbose and trainer.is_global_zero:
            Console().print(self.summary_table(module))

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        if stage == "fit" and self._resize_hook is not None:
            # the resize serves a resumed fit's checkpoint only: afterwards a load of other shapes must fail loudly
            self._resize_hook.remove()
            self._resize_hook = None

    def summary_table(self, module: nn.Module) -> Any:
        """A rich table: neurons per layer before and after, and the parameter count (``elimination_table``)."""
        params = sum(p.numel() for p in module.parameters())
        return elimination_table(self.pairs, self.alive(), self._dense_params, params)

    # -- state -------------------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "pairs": [p.to_dict() for p in self.pairs],
            "skipped": dict(self.skipped),
            "history": copy.deepcopy(self.history),
            "round": self._round,
            "round_steps": list(self._round_steps),
            "stopped": self._stopped,
            "finished": self._finished,
            "shrunk_at": self._shrunk_at,
            "best": self.guard.best,
            "capped": self._capped,
            "validated": self._validated,
            "monitor": self.guard.monitor,
            "mode": self.guard.mode,
            "stop_reason": self._stop_reason,
            "spent": None if self.event_guard is None else self.event_guard.state_dict(),
            "elimination_cap": self._elimination_cap,
            "dense_params": self._dense_params,
            "dense_fp32_bytes": self._dense_fp32_bytes,
            "original_shapes": dict(self._original_shapes),
            "param_table": [list(row) for row in self._table],
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pairs = [LayerPair.from_dict(p) for p in state_dict.get("pairs", [])]
        self.skipped = dict(state_dict.get("skipped", {}))
        self.history = [
            {**entry, "records": [compact_record(record) for record in entry.get("records", [])]}
            for entry in copy.deepcopy(list(state_dict.get("history", [])))
        ]
        self._round = int(state_dict.get("round", 0))
        self._round_steps = list(state_dict.get("round_steps", []))
        self._stopped = bool(state_dict.get("stopped", False))
        self._finished = bool(state_dict.get("finished", False))
        self._shrunk_at = state_dict.get("shrunk_at")
        self._capped = bool(state_dict.get("capped", False))
        self._validated = bool(state_dict.get("validated", False))
        if self._capped:
            self.accuracy_budget = None
            self._cap_tolerances()
        self.guard.load_state_dict({k: state_dict[k] for k in ("monitor", "mode", "best") if k in state_dict})
        self._stop_reason = str(state_dict.get("stop_reason", ""))
        if self.event_guard is not None:
            self.event_guard.load_state_dict(state_dict.get("spent"))
        self._elimination_cap = state_dict.get("elimination_cap")
        self._dense_params = int(state_dict.get("dense_params", 0))
        self._dense_fp32_bytes = int(state_dict.get("dense_fp32_bytes", 0))
        self._original_shapes = {n: list(v) for n, v in state_dict.get("original_shapes", {}).items()}
        self._table = [(int(n), r, c) for n, r, c in state_dict.get("param_table", [])]


def _resize_before_load(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    resize_to_state(module, {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)})
