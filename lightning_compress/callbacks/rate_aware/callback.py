"""RateAware: train for the file's length — a rate term in the loss, and a support cut along a byte path.

Our methods decide support and values by magnitudes and accuracy budgets, then code what is left; the optimizer
never sees the bits. RateAware adds to the loss's gradient, every optimizer step of its window, ``weight`` times the
differentiable estimate of the kilobytes the sparse codecs will spend on its tensors
(:func:`~lightning_compress.functional.rate.relaxed_bits`: positions under the i.i.d. model the entropy coder
reaches, plus ``value_bits`` per non-zero). Its gradient prices every weight at what zeroing it saves in the file,
so the weights the loss barely needs drift to zero before they are cut. At ``events`` points of the window the
support is cut: the global magnitude threshold at which the hard count fits the next point of a byte path, from the
bytes at the window's start to ``target_bytes`` (cubic: big cuts early, small ones late), held for the rest of the
fit. ``weight`` is steered between cuts so that the soft estimate reaches the next point of the path before the cut
comes (a cut then removes weights that are already small).

Without ``target_bytes`` the path goes towards the bytes of 5% non-zeros in every tensor (SuccessivePruning's
default) under an accuracy guard (``accuracy_budget``): cuts since a validation that fell further than the budget
are undone, and the support is held where it was validated. ``guard="event"`` judges each cut by its own cost on
cached validation samples instead, and counts what the model loses between two cuts
(:class:`~lightning_compress.callbacks.event_guard.EventGuard`); a cut over budget is bisected to the largest cut within
budget (in bytes, between the support now and the path's point). It is not the default: a cut removes weights the
rate term has already pushed to zero, so it costs nothing at once, and what the term costs shows in what the network
fails to learn, which neither the cut's cost nor a fall between cuts measures (2-epoch fits: 4.6 and 7.5 pt on the
MLP and LeNet-5 at about 15x, against 2.3 and 3.7 pt with the validation guard, which undid every cut).

RateAware owns the **support** of its tensors (it is refused next to SuccessivePruning on the same tensors). Their
values are left to a value method: with WeightSharing after it the file stores positions and codebook indices in one
entropy-coded stream per tensor (``sparse_codebook``); alone, the surviving values are stored exactly (``sparse``,
float32), and ``value_bits="auto"`` prices them so.

This room keeps the arguments, the rate term and its steering, the schedule, the validation guard and resuming; the
byte path and the cuts are in :mod:`.cuts`, the estimates and the gradient in ``functional.rate``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from typing_extensions import override

from lightning_compress.arguments import check_choice, check_number, check_parameters, is_number
from lightning_compress.callbacks.event_guard import EventGuard
from lightning_compress.callbacks.events import compression_event
from lightning_compress.callbacks.guard import MetricGuard, guard_validation, require_validation
from lightning_compress.callbacks.rate_aware.cuts import SupportCuts
from lightning_compress.callbacks.state import load_plain_state, plain_state
from lightning_compress.callbacks.validation import validation_loader
from lightning_compress.functional.rate import add_rate_gradients
from lightning_compress.functional.selection import select_parameters
from lightning_compress.representation import CompositionError

__all__ = ["RateAware"]

#: Bits per non-zero value by the kind of the value method that stores them: a codebook index under its histogram
#: (WeightSharing's codebooks spent 3.5-3.9 bits on our rate-trained nets), a sign (Ternarization; the support is
#: coded apart). Values no method claims are stored exactly: 32 bits.
VALUE_BITS = {"codebook": 3.6, "ternary": 1.0}
#: The largest ratio between the dearest and cheapest value price of RateAware's tensors (auto prices) it accepts.
MAX_PRICE_RATIO = 4.0
#: How far the steered weight may move from ``weight`` (either way).
STEER_RANGE = 30.0
#: The fields a checkpoint holds as they are (key ``"event"``: ``self._event``).
_PLAIN_STATE = ("event", "event_steps", "start_bits", "end_bits", "stopped", "stop_reason")


class RateAware(SupportCuts):
    """Rate term in the loss and support cuts along a byte path (see the module docstring).

    Args:
        target_bytes: the artifact's size to reach (the file: every tensor, header included). ``None``: no target,
            cut under the accuracy guard.
        accuracy_budget: the guard's budget (drop of the validation metric from its best, e.g. 0.01 = 1 point);
            ``None`` (default): no guard. One of ``target_bytes`` and ``accuracy_budget`` is required: with neither,
            RateAware refuses at construction (a guarded default cost 2.6 points on LeNet-5, see the docs).
        weight: the rate term's initial weight, in loss per kilobyte of estimated file (0.1 is the minimum
            description length's exchange rate for 54,000 training samples and a loss averaged over them).
        steer: how fast the weight follows the byte path (0: a fixed weight).
        scale: where the relaxed count bends (``tau``), as a fraction of each tensor's mean non-zero magnitude.
        value_bits: bits per non-zero value; ``"auto"``: 3.6 under WeightSharing (and 160 bytes for its table),
            1 (the sign) under Ternarization,
            32 when no value method claims the values.
        events: support cuts in the window.
        final_fraction: fraction of the window after the last cut (fine-tuning at the final support, no rate term).
        parameters: ``"all"`` (every trainable parameter, as SuccessivePruning), ``"weights"`` or a list of names.
        monitor: the validation metric of ``guard="validation"`` (``None``: found by name).
        mode: ``"max"``/``"min"`` for ``monitor`` (``None``: from its name).
        guard: ``"validation"`` (the default, also for ``None``: a validation metric against its best) or
            ``"event"`` (each cut judged by its own cost, the losses between cuts counted too; it does not see
            what the rate term costs in what the network learns, see the docs).
        backoff_steps: with ``guard="event"``, bisection steps of a cut over budget.
        start: window start, a fraction of the fit's optimizer steps.
        end: window end.

    Examples:
        >>> from lightning_compress import RateAware, WeightSharing
        >>> callbacks = [RateAware(target_bytes=4000), WeightSharing()]
        >>> callbacks[0].target_bytes, callbacks[0].guard is None
        (4000, True)
    """

    LOG_PREFIX = "rate"
    PROGRESS_KEYS = ("event", "estimated_bytes")
    ASPECT = "support"

    def __init__(
        self,
        target_bytes: int | None = None,
        accuracy_budget: float | None = None,
        weight: float = 0.3,
        steer: float = 0.01,
        scale: float = 0.5,
        value_bits: float | str = "auto",
        events: int = 15,
        final_fraction: float = 0.25,
        parameters: str | Sequence[str] = "all",
        monitor: str | None = None,
        mode: str | None = None,
        guard: str | None = None,
        backoff_steps: int = 4,
        start: float | None = None,
        end: float | None = None,
    ) -> None:
        super().__init__(start=start, end=end)
        check_number("target_bytes", target_bytes, low=1, integer=True, allow_none=True)
        check_number("accuracy_budget", accuracy_budget, low=0, allow_none=True)
        check_number("weight", weight, low=0)
        check_number("steer", steer, low=0, high=1)
        check_number("scale", scale, low=0, low_open=True)
        if value_bits != "auto" and not (is_number(value_bits) and float(value_bits) >= 0):
            raise ValueError(f"`value_bits` must be 'auto' or a number of bits >= 0, got {value_bits!r}.")
        check_number("events", events, low=1, integer=True)
        check_number("final_fraction", final_fraction, low=0, high=1, high_open=True)
        check_parameters("parameters", parameters)
        check_choice("guard", guard, ("validation", "event"), allow_none=True)
        check_number("backoff_steps", backoff_steps, low=0, integer=True)
        # the validation guard by default: the rate term's cost accrues in training, between the cuts, where the
        # event guard does not see it (measured: docs/methods/rate-aware.md)
        guard = guard or "validation"
        if target_bytes is None and accuracy_budget is None:
            raise ValueError(
                "RateAware needs a target: `target_bytes=` (the file's size, e.g. target_bytes=4000), or "
                "`accuracy_budget=` (the drop of the validation metric it may cost, e.g. 0.01 for 1 point) to cut "
                "towards 5% non-zeros as far as that guard allows."
            )
        self.target_bytes = None if target_bytes is None else int(target_bytes)
        self.weight = float(weight)
        self.steer = float(steer)
        self.scale = float(scale)
        self.value_bits_arg = value_bits
        self.events = int(events)
        self.final_fraction = float(final_fraction)
        self.parameters = parameters if isinstance(parameters, str) else list(parameters)
        #: the accuracy guard (None: cut as far as the target asks)
        self.guard = (
            None
            if accuracy_budget is None or guard != "validation"
            else MetricGuard(self.owner, float(accuracy_budget), monitor, mode)
        )
        #: the guard that judges each cut by its own cost (``guard="event"``)
        self.event_guard = (
            None
            if accuracy_budget is None or guard != "event"
            else EventGuard(self.owner, float(accuracy_budget), charge_drift=True)
        )
        self.backoff_steps = int(backoff_steps)
        self._names: list[str] = []
        self._event_steps: list[int] = []
        self._event = 0
        #: the steered weight (loss per KB)
        self.current_weight = self.weight
        #: bits of the claimed tensors at the window's start (hard count) and at the path's end
        self._start_bits: float | None = None
        self._end_bits: float | None = None
        self._value_bits: list[float] = []
        self._soft_bits = math.nan
        self._saved_masks: dict[str, torch.Tensor] = {}
        self._stopped = False
        self._stop_reason = ""
        self.history: list[dict[str, float]] = []

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(target_bytes=self.target_bytes, parameters=str(self.parameters))

    # -- set-up ------------------------------------------------------------------------------------------------
    @override
    def planned_events(self, window: tuple[float, float], steps: tuple[int, int] | None) -> str:
        target = f"to {self.target_bytes:,} bytes" if self.target_bytes is not None else "as far as the guard allows"
        return f"rate term in the loss; {self.events} support cuts {target}"

    @override
    def guard_summary(self) -> str:
        if self.event_guard is not None:
            return f"each cut's own cost and the losses between cuts, all within {self.event_guard.budget:g}"
        return "none (target_bytes given)" if self.guard is None else self.guard.summary()

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            self._names = [n for n, _ in select_parameters(self.target_module(pl_module), self.parameters)]
            self.claim(pl_module, "support", self._names, kind="rate")

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        require_validation(self.owner, trainer, pl_module, self.guard, "its cuts", "`target_bytes=` to cut that far")
        if self.event_guard is not None and not self.should_skip(trainer) and validation_loader(trainer) is None:
            raise ValueError(
                "RateAware(accuracy_budget=...) judges each cut on validation samples, and this fit has no validation "
                "data (none given to `fit`, or `limit_val_batches=0`). Pass validation data to `fit`, or give "
                "`target_bytes=` to cut that far unguarded."
            )
        rep = self.representation(pl_module)
        kinds = [claim.kind if (claim := rep.tensors[n].values) else None for n in self._names]
        if self.value_bits_arg == "auto":
            # a sign per non-zero under Ternarization, a codebook index under WeightSharing, else float32
            self._value_bits = [VALUE_BITS.get(kind or "", 32.0) for kind in kinds]
        else:
            self._value_bits = [float(self.value_bits_arg)] * len(self._names)
        self._check_prices(kinds)
        unclaimed = kinds.count(None)
        if unclaimed and self._leads(trainer):
            rank_zero_info(
                f"RateAware decides the support; no value method claims the values of {unclaimed} of its "
                f"{len(kinds)} tensors, so their surviving values are stored exactly (float32) and priced at 32 bits. "
                "Add WeightSharing (or Ternarization) to store them as codebook indices or signs, a few bits each."
            )
        shrinks = any(t.structure is not None for t in rep.tensors.values())
        if self.target_bytes is not None and not shrinks and self._start_bits is None and not self.should_skip(trainer):
            self._rest_of_file(pl_module)  # nothing shrinks the rest before the window: refuse now, not mid-fit
        if not self._event_steps:
            self._event_steps = self.steps_in_window(self.events, self.final_fraction)
        if self._saved_masks:  # resumed: masks from the checkpoint
            self.holds.hold_support(self.target_module(pl_module), self._saved_masks)
            self._saved_masks = {}

    def _check_prices(self, kinds: Sequence[str | None]) -> None:
        """Refuse tensors whose values cost very different bits (some shared or ternary, some float32).

        One global cut by magnitude cannot weigh them: the rate term pushes the expensive ones down hardest and the
        cuts empty them. Measured with Ternarization, which keeps the head in float32: the head kept 8 of its 670
        weights and the net fell to 19-47% on Fashion-MNIST. Refused before the first step instead.
        """
        prices = dict(zip(self._names, self._value_bits, strict=True))
        if not prices or max(prices.values()) <= MAX_PRICE_RATIO * min(prices.values()):
            return
        cheap = [n for n, b in prices.items() if b == min(prices.values())]
        dear = [n for n, b in prices.items() if b == max(prices.values())]
        shown = ", ".join(dear[:4]) + (", ..." if len(dear) > 4 else "")
        owners = sorted({k for k in kinds if k}) or ["none"]
        raise CompositionError(
            f"RateAware prices the values of its tensors by who stores them ({', '.join(owners)}), and they differ "
            f"too much: {len(dear)} tensor(s) at {max(prices.values()):g} bits a value ({shown}; float32: no value "
            f"method claims them), {len(cheap)} at {min(prices.values()):g}. One cut by magnitude would empty the "
            "expensive ones (the head of a net, measured: 8 weights left). Give RateAware `parameters=` the tensors "
            "the value method stores (e.g. the names it claims), make the value method take them all, or give "
            "`value_bits=` one number for all."
        )

    def _rate_active(self, trainer: pl.Trainer) -> bool:
        first = self.window_steps()[0]
        return (
            not self._stopped
            and self._event < self.events
            and first <= trainer.global_step < self._event_steps[-1]
            and self._start_bits is not None
            # under a guard the rate term waits for its baseline like the cuts: what it costs must be judged too
            and (self.guard is None or self.guard.best is not None)
        )

    # -- per step ----------------------------------------------------------------------------------------------
    @override
    def before_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start_bits is None and trainer.global_step >= self.window_steps()[0]:
            self._begin(trainer, pl_module)

    @override
    def add_gradients(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._rate_active(trainer) or self.current_weight == 0:
            return
        params = self._params(pl_module)
        # held zeros are exact zeros: they count nothing and get no gradient (the masks are applied after anyway)
        bits = add_rate_gradients(params, self._value_bits, self.scale, self.current_weight / 8192.0)
        self._soft_bits = float(bits)  # the one synchronisation of the step (the steering needs the number)
        if self.steer:
            # more weight while the soft estimate is above the next cut's point, less once below it
            target = self._path_bits(self._event + 1)
            error = max(-1.0, min(1.0, math.log(max(self._soft_bits, 1.0) / target)))
            steered = self.current_weight * math.exp(self.steer * error)
            self.current_weight = min(self.weight * STEER_RANGE, max(self.weight / STEER_RANGE, steered))

    @override
    def act(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._stopped or self._start_bits is None:
            return
        due = [i for i in range(self._event, self.events) if trainer.global_step >= self._event_steps[i]]
        if not due:
            return
        if self.guard is not None and self.guard.best is None:
            return  # the first cut waits for the baseline validation
        self._event = due[-1] + 1  # cuts that waited are merged into the latest one due
        if self.event_guard is not None:
            self._guarded_cut(trainer, pl_module, self._path_bits(self._event))
        else:
            self._cut(trainer, pl_module, self._path_bits(self._event))

    # -- the accuracy guard ----------------------------------------------------------------------------------------
    @override
    @compression_event("validation_check")
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.guard is None or self._stopped:
            return
        stop = guard_validation(self, trainer, self.guard, self._event, "cut", "`target_bytes=`")
        if stop is not None:
            reason, self._event, warn = stop
            self._stop(reason, warn=warn)

    @property
    @override
    def guarding(self) -> bool:
        return self.guard is not None and not self._stopped and self._event < self.events

    @override
    def finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start_bits is None:  # the window never opened (a fit shorter than its start)
            self._begin(trainer, pl_module)
        unguarded = self.guard is None and self.event_guard is None
        if unguarded and self._event < self.events:  # a fit too short for the schedule still gets there
            self._event = self.events
            self._cut(trainer, pl_module, self._path_bits(self.events))
        if self.event_guard is not None:
            self.event_guard.release()
        params = self._params(pl_module)
        held = sum(int(p.count_nonzero()) for p in params)
        total = sum(p.numel() for p in params)
        self.log_figures(trainer, {"final_nonzeros": float(held), "final_density": held / max(total, 1)})
        rank_zero_info(
            f"RateAware: {held:,} non-zeros of {total:,} ({held / max(total, 1):.4f})"
            + (f"; {self._stop_reason}." if self._stop_reason else ".")
        )

    # -- state -------------------------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            **plain_state(self, _PLAIN_STATE),
            "current_weight": self.current_weight,
            **self.holds.state(),
            "history": list(self.history),
            "guard": None if self.guard is None else self.guard.state_dict(),
            "spent": None if self.event_guard is None else self.event_guard.state_dict(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        load_plain_state(self, state_dict, _PLAIN_STATE)
        self.current_weight = float(state_dict.get("current_weight", self.weight))
        self._saved_masks = self.holds.masks_from_state(state_dict)
        self.history = list(state_dict.get("history", []))
        if self.guard is not None and state_dict.get("guard") is not None:
            self.guard.load_state_dict(state_dict["guard"])
        if self.event_guard is not None:
            self.event_guard.load_state_dict(state_dict.get("spent"))
