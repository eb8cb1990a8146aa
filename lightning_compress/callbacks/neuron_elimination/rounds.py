"""NeuronElimination's rounds: what one round does to the model, how the guards judge it, and why the rounds stop.

:class:`EliminationRounds` stands between the structure (:mod:`.structure`: the state, the masks, the shrink) and the
callback (:mod:`.callback`: its arguments, the schedule, the fit's hooks and resuming): a round's statistics and
decision (the algorithms are in :mod:`lightning_compress.functional.neuron_elimination`), the redistribution, the
event guard's back-off to the largest leading share within budget, and the validation guard's undo.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from lightning_compress.callbacks.event_guard import EventCost, EventGuard, judge_event, over_budget
from lightning_compress.callbacks.events import compression_event
from lightning_compress.callbacks.guard import MetricGuard
from lightning_compress.callbacks.neuron_elimination.structure import EliminationStructure
from lightning_compress.functional.neuron_elimination import (
    LayerPair,
    RoundRecord,
    collect_moments,
    compact_record,
    decide_round,
    leading_share,
    param_count,
    params_goal,
    redistribute_round_,
)
from lightning_compress.surgery import resize_to_state

__all__ = ["EliminationRounds"]


class EliminationRounds(EliminationStructure):
    """The rounds of :class:`~lightning_compress.callbacks.neuron_elimination.NeuronElimination` (its base class).

    The settings it reads are the callback's arguments, declared here.
    """

    # the subclass's settings (its arguments, checked there)
    rounds: int
    tolerances: list[float]
    score: str
    target_params: float | None
    accuracy_budget: float | None
    guard: MetricGuard
    event_guard: EventGuard | None
    backoff_steps: int
    unguarded_tolerance: float
    calibration_batches: int | None
    min_rows_per_neuron: int
    min_neurons: int
    min_layer_fraction: float
    ridge: float

    @property
    def monitor(self) -> str | None:
        """The validation metric the guard watches (``None`` until found at the first validation)."""
        return self.guard.monitor

    @property
    def mode(self) -> str | None:
        """``"max"`` or ``"min"`` for :attr:`monitor`."""
        return self.guard.mode

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

    @compression_event("round")
    def _guarded_round(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A round as large as the event guard allows: the whole round, or the largest leading share within budget.

        The share is bisected from the weights as they are now (the training since the last round is kept); with no
        share that fits, nothing is eliminated in this round and the next round tries again.
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
            self._redistribute(trainer, pl_module, leading_share(records, share), alive_before)

        largest = 1.0 if self._elimination_cap is None else min(1.0, self._elimination_cap / total)
        chosen = judge_event(self, trainer, guard, put, restore, (0.0, largest), self.backoff_steps)
        if chosen.deferred:
            rank_zero_info(f"NeuronElimination defers a round: {guard.chance_line()}; the next round tries again.")
            return
        share, cost = chosen.position, chosen.cost
        kept = leading_share(records, share)
        count = sum(len(r.eliminations) for r in kept)
        if count == 0:  # skipped, not stopped: later rounds (larger tolerances, a model further on) try again
            guard.refuse(over_budget(f"round {self._round + 1}'s smallest share tried", guard, cost))
            rank_zero_info(f"NeuronElimination skips a round: {guard.last_refusal}; the next round tries again.")
            return
        if count < total:  # backed off: later rounds eliminate no more than what fit
            self._elimination_cap = count
        elif self._elimination_cap is not None:
            self._elimination_cap *= 2
        guard.accept(cost)
        self._apply_round(trainer, pl_module, kept, alive_before, cost)

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

    # -- end of the window -----------------------------------------------------------------------------------------
    @override
    def finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._finished:
            self._finish_structure(trainer, pl_module, rebuild=False)

    @compression_event("shrink")
    def _finish_structure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, rebuild: bool) -> None:
        """End the rounds (why they stopped) and shrink the layers; ``rebuild``: the fit goes on after it."""
        if not self.pairs:
            self._finished = True
            return
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
            skipped = self.event_guard.refusal_summary("round") if self.event_guard is not None else ""
            if skipped:
                self._stop_reason += f"; {skipped}"
            at_floors = all(len(a) <= self._floor(p) for p, a in zip(self.pairs, self.alive(), strict=True))
            if self.target_params is not None and at_floors:
                self._stop_reason += (
                    f"; every layer reached its floor (min_layer_fraction={self.min_layer_fraction}) before "
                    f"target_params={self.target_params}"
                )
        self._shrink(trainer, pl_module, rebuild)
