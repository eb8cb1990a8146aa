"""RateAware's byte path and its support cuts: the path's ends, a cut to its next point, and a judged cut's back-off.

:class:`SupportCuts` is the base of :class:`~lightning_compress.callbacks.rate_aware.RateAware` (which keeps its
arguments, the rate term and its steering, the schedule, the validation guard and resuming): the path from the bytes
of its tensors at the window's start to ``target_bytes`` (what the rest of the file leaves, measured on a trial
file) or to 5% non-zeros, the global magnitude threshold a cut holds the support at, and under the event guard the
cut bisected in log-bytes to the largest one within budget.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn

from lightning_compress.callbacks.base import CompressionCallback
from lightning_compress.callbacks.event_guard import EventCost, EventGuard, judge_event, measure_now, over_budget
from lightning_compress.callbacks.events import compression_event
from lightning_compress.codec.reader import read_artifact
from lightning_compress.functional.rate import hard_bits, threshold_for_bits
from lightning_compress.saving import trial_artifact

__all__ = ["CODEBOOK_TABLE_BYTES", "GUARDED_DENSITY", "SupportCuts"]

#: Bytes a shared codebook's table takes in the file (values and index histogram; 144 bytes for 18 values).
CODEBOOK_TABLE_BYTES = 160
#: The byte path's end without a target: the bytes of this density (the share of entries kept) in every tensor, as
#: SuccessivePruning's default 95% zeros. A path to 1/1000 of the fp32 bytes made each cut so large that the guard
#: (one validation an epoch) undid all of them on a 6-epoch MLP fit: no compression, 1.2 points lost to the rate term.
GUARDED_DENSITY = 0.05


class SupportCuts(CompressionCallback):
    """The byte path and the cuts of :class:`~lightning_compress.callbacks.rate_aware.RateAware` (its base class).

    The settings and state it reads are the callback's, declared here.
    """

    # the callback's settings (its arguments, checked there) and state
    target_bytes: int | None
    events: int
    backoff_steps: int
    current_weight: float
    event_guard: EventGuard | None
    history: list[dict[str, float]]
    _names: list[str]
    _event: int
    _start_bits: float | None
    _end_bits: float | None
    _value_bits: list[float]
    _soft_bits: float
    _stopped: bool
    _stop_reason: str

    def _params(self, pl_module: nn.Module) -> list[torch.Tensor]:
        params = dict(self.target_module(pl_module).named_parameters())
        return [params[n] for n in self._names]

    def _begin(self, trainer: pl.Trainer, pl_module: nn.Module) -> None:
        """At the window's start (after any structural method): the path's two ends, in bits of the tensors."""
        if self.event_guard is not None and trainer.is_global_zero:
            self._guard_baseline(trainer, pl_module)
        params = self._params(pl_module)
        numels = [p.numel() for p in params]
        self._start_bits = hard_bits([int(p.count_nonzero()) for p in params], numels, self._value_bits)
        if self.target_bytes is None:
            kept = [max(1, math.ceil(GUARDED_DENSITY * n)) for n in numels]
            self._end_bits = hard_bits(kept, numels, self._value_bits)
            return
        others = self._rest_of_file(pl_module)
        self._end_bits = 8.0 * (self.target_bytes - others)
        rank_zero_info(
            f"RateAware: {self._start_bits / 8:,.0f} bytes estimated for its {len(params)} tensors now, "
            f"{self._end_bits / 8:,.0f} to reach ({others:,} bytes go to the rest of the file)."
        )

    def _guard_baseline(self, trainer: pl.Trainer, pl_module: nn.Module) -> None:
        """The event guard's measure before the rate term starts: what the model loses from here on is counted."""
        assert self.event_guard is not None  # noqa: S101 - only under the event guard
        module = self.target_module(pl_module)
        saved_buffers = {n: b.detach().clone() for n, b in module.named_buffers()}
        self.event_guard.baseline(measure_now(self, trainer, self.event_guard)[0])
        with torch.no_grad():  # the measure re-estimated the statistics: the fit's own go back
            buffers = dict(module.named_buffers())
            for name, value in saved_buffers.items():
                buffers[name].copy_(value)

    def _rest_of_file(self, pl_module: nn.Module) -> int:
        """Bytes of the file that ``target_bytes`` leaves no room for: refused when they already fill it.

        Raises:
            ValueError: the rest of the file takes ``target_bytes`` or more.
        """
        assert self.target_bytes is not None  # noqa: S101 - called with a target only
        others = self._other_bytes(pl_module)
        rep = self.representation(pl_module)
        if any((claim := rep.tensors[n].values) is not None and claim.kind == "codebook" for n in self._names):
            others += CODEBOOK_TABLE_BYTES  # WeightSharing writes its table after the last cut
        if others >= self.target_bytes:
            raise ValueError(
                f"RateAware(target_bytes={self.target_bytes}): the rest of the file (header and the tensors it does "
                f"not compress) already takes {others} bytes; give a larger target_bytes or `parameters=` more tensors."
            )
        return others

    def _other_bytes(self, pl_module: nn.Module) -> int:
        """Bytes of the file that are not this callback's tensors: header, records, checksum and the other tensors.

        Measured on a trial file of the model as it is: its size less the payloads (and the shared blobs) of the
        tensors RateAware compresses.
        """
        with trial_artifact(self.target_module(pl_module)) as path:
            artifact = read_artifact(path)
            mine = set(self._names)
            payloads = sum(r.nbytes for r in artifact.tensors if r.name in mine)
            keys = {k for r in artifact.tensors if r.name in mine for k in r.meta.get("shared_keys", [])}
            kept = {k for r in artifact.tensors if r.name not in mine for k in r.meta.get("shared_keys", [])}
            payloads += sum(artifact.shared[k][1] for k in keys - kept)
            return path.stat().st_size - payloads

    def _path_bits(self, event: int) -> float:
        """The path's point at cut ``event`` (1-based): geometric between the ends, cubic in the cut's rank."""
        assert self._start_bits is not None  # noqa: S101 - set by _begin
        assert self._end_bits is not None  # noqa: S101 - set by _begin
        progress = 1.0 - (1.0 - min(event, self.events) / self.events) ** 3
        start, end = max(self._start_bits, 1.0), max(self._end_bits, 1.0)
        return start * (end / start) ** progress

    def _support_at(self, pl_module: nn.Module, bits: float) -> dict[str, torch.Tensor]:
        """The held support less every entry below the global magnitude at which the hard count fits ``bits``."""
        params = self._params(pl_module)
        masks = [self.holds.support.get(n, p.detach() != 0) for n, p in zip(self._names, params, strict=True)]
        magnitudes = [p.detach()[m].abs() for p, m in zip(params, masks, strict=True)]
        threshold = threshold_for_bits(magnitudes, [p.numel() for p in params], self._value_bits, bits)
        return {n: m & (p.detach().abs() > threshold) for n, p, m in zip(self._names, params, masks, strict=True)}

    def _current_bits(self, pl_module: nn.Module) -> float:
        params = self._params(pl_module)
        return hard_bits([int(p.count_nonzero()) for p in params], [p.numel() for p in params], self._value_bits)

    @compression_event("cut")
    def _cut(self, trainer: pl.Trainer, pl_module: nn.Module, bits: float) -> None:
        """Zero every entry below the global magnitude at which the hard count fits ``bits``; hold the support."""
        self._apply_cut(trainer, pl_module, bits)

    def _apply_cut(self, trainer: pl.Trainer, pl_module: nn.Module, bits: float, cost: EventCost | None = None) -> None:
        params = self._params(pl_module)
        new = self._support_at(pl_module, bits)
        self.holds.hold_support(self.target_module(pl_module), {**self.holds.support, **new})
        self.changed_weights = True
        nonzeros = [int(m.sum()) for m in new.values()]
        estimate = hard_bits(nonzeros, [p.numel() for p in params], self._value_bits) / 8
        figures = {
            "event": float(self._event),
            "estimated_bytes": estimate,
            "nonzeros": float(sum(nonzeros)),
            "weight": self.current_weight,
            "soft_bytes": self._soft_bits / 8,
        }
        judged = ""
        if cost is not None:
            figures.update(cut_cost=cost.drop, cut_cost_se=cost.se)
            judged = f", cost {cost} on the guard's samples"
        self.history.append(figures)
        self.log_figures(trainer, figures)
        rank_zero_info(
            f"RateAware cut {self._event}/{self.events}: {sum(nonzeros):,} non-zeros, about {estimate:,.0f} bytes "
            f"for its tensors (weight {self.current_weight:.3g}/KB){judged}."
        )

    @compression_event("cut")
    def _guarded_cut(self, trainer: pl.Trainer, pl_module: pl.LightningModule, bits: float) -> None:
        """The cut to ``bits``, or the largest cut within the event guard's budget (bisected in log-bytes).

        From the weights as they are now: the training since the last cut is kept. With no cut that fits, the
        support is held where it is and the cuts (and the rate term) stop.
        """
        guard = self.event_guard
        assert guard is not None  # noqa: S101 - only under the event guard
        module = self.target_module(pl_module)
        now = self._current_bits(pl_module)
        if bits >= now:
            return
        saved_support = {n: m.clone() for n, m in self.holds.support.items()}
        saved = {n: p.detach().clone() for n, p in zip(self._names, self._params(pl_module), strict=True)}
        saved_buffers = {n: b.detach().clone() for n, b in module.named_buffers()}

        @torch.no_grad()
        def restore() -> None:
            for name, param in zip(self._names, self._params(pl_module), strict=True):
                param.copy_(saved[name])
            buffers = dict(module.named_buffers())
            for name, value in saved_buffers.items():
                buffers[name].copy_(value)
            self.holds.hold_support(module, saved_support) if saved_support else self.holds.release()

        def put(log_bits: float) -> None:
            self.holds.hold_support(module, {**self.holds.support, **self._support_at(pl_module, math.exp(log_bits))})

        # in log-bytes between the support now (no cut) and the path's point
        span = (math.log(now), math.log(max(bits, 1.0)))
        chosen = judge_event(self, trainer, guard, put, restore, span, self.backoff_steps)
        if chosen.deferred:
            rank_zero_info(f"RateAware defers a cut: {guard.chance_line()}; the next cut tries again.")
            return
        target, cost = math.exp(chosen.position), chosen.cost
        if chosen.held:
            self._stop(over_budget(f"cut {self._event}'s smallest cut tried", guard, cost))
            return
        guard.accept(cost)
        self._apply_cut(trainer, pl_module, target, cost)

    def _stop(self, reason: str, warn: bool = False) -> None:
        self._stopped = True
        self._stop_reason = reason
        (rank_zero_warn if warn else rank_zero_info)(f"RateAware holds its support where it is: {reason}.")
