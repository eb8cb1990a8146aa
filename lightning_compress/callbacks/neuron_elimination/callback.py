"""The NeuronElimination callback: its arguments, when its rounds run, the fit's hooks and resuming.

Annealed elimination of neurons and channels whose activations are linearly dependent on the others, with their
contribution redistributed onto the survivors (Shah, Olivier, Raj 2020). What a round does is in :mod:`.rounds`; the
algorithms in :mod:`lightning_compress.functional.neuron_elimination`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn
from typing_extensions import override

from lightning_compress.arguments import check_bool, check_choice, check_names, check_number
from lightning_compress.callbacks.calibration import has_validation
from lightning_compress.callbacks.event_guard import EventGuard
from lightning_compress.callbacks.guard import DEFAULT_ACCURACY_BUDGET, MetricGuard
from lightning_compress.callbacks.neuron_elimination.rounds import EliminationRounds
from lightning_compress.callbacks.state import load_plain_state, plain_state
from lightning_compress.callbacks.validation import validation_loader
from lightning_compress.functional.forward import ForwardInputs
from lightning_compress.functional.neuron_elimination import (
    LayerPair,
    anneal_tolerance,
    compact_record,
)

__all__ = ["DEFAULT_ACCURACY_BUDGET", "DEFAULT_TOLERANCE", "NeuronElimination"]

#: The last round's tolerance when none is given.
DEFAULT_TOLERANCE = 0.05
#: The fields a checkpoint holds as they are (key ``"round"``: ``self._round``).
_PLAIN_STATE = (
    "round",
    "round_steps",
    "stopped",
    "finished",
    "shrunk_at",
    "capped",
    "validated",
    "stop_reason",
    "elimination_cap",
    "dense_params",
    "dense_fp32_bytes",
    "original_shapes",
)


class NeuronElimination(EliminationRounds):
    """Eliminate linearly dependent neurons during ``fit`` and shrink the layers at its end.

    Every Linear/Conv2d whose output channels reach exactly one Linear/Conv2d through channel-wise operations is a
    *pair* (traced once with torch-pruning; residual, branched and grouped channels are left alone). ``rounds``
    rounds over the first ``1 - final_fraction`` of the steps eliminate, greedily across layers, the neurons whose
    score (``score``) is within the round's tolerance, annealed from ``start_tolerance`` to ``tolerance``, or as many
    as a size schedule to ``target_params`` needs; each one's consumer columns are redistributed onto the survivors.
    The default guard (1 point, off when ``tolerance`` or ``target_params`` is given) judges each round by its own
    cost on cached validation samples (:class:`~lightning_compress.callbacks.event_guard.EventGuard`) and backs a
    round over budget off to the largest leading share that fits, from the current weights. Removed neurons are
    held at zero under masks (``removal="mask"``) and the layers shrunk at the window's end; the history is plain
    data in :meth:`state_dict`, so a resumed fit ends as an uninterrupted one. The method's page in the docs
    (Methods, NeuronElimination) says each step in full.

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
        self._resize_on_load(pl_module)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
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
            self._find_pairs(trainer, pl_module)
        if not self._round_steps:
            self._round_steps = self.steps_in_window(self.rounds, self.final_fraction)
        self._refresh_masks(pl_module)

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
                # the budget's rounds are the last ones: a later round eliminates what a skipped one would, and more
                decision = self.broadcast(trainer, self.event_decision("round", self.rounds - self._round, latest=True))
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

    # -- state -------------------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            **plain_state(self, _PLAIN_STATE),
            "pairs": [p.to_dict() for p in self.pairs],
            "skipped": dict(self.skipped),
            "history": copy.deepcopy(self.history),
            "best": self.guard.best,
            "monitor": self.guard.monitor,
            "mode": self.guard.mode,
            "spent": None if self.event_guard is None else self.event_guard.state_dict(),
            "param_table": [list(row) for row in self._table],
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        load_plain_state(self, state_dict, _PLAIN_STATE)
        self.pairs = [LayerPair.from_dict(p) for p in state_dict.get("pairs", [])]
        self.skipped = dict(state_dict.get("skipped", {}))
        self.history = [
            {**entry, "records": [compact_record(record) for record in entry.get("records", [])]}
            for entry in copy.deepcopy(list(state_dict.get("history", [])))
        ]
        if self._capped:
            self.accuracy_budget = None
            self._cap_tolerances()
        self.guard.load_state_dict({k: state_dict[k] for k in ("monitor", "mode", "best") if k in state_dict})
        if self.event_guard is not None:
            self.event_guard.load_state_dict(state_dict.get("spent"))
        self._table = [(int(n), r, c) for n, r, c in state_dict.get("param_table", [])]
