"""SuccessivePruning's stages: a pruning stage (guarded or not) and the final stream, written into the weights.

:class:`SurpStages` is the base of :class:`~lightning_compress.callbacks.successive_pruning.SuccessivePruning` (which
keeps its arguments, the schedule, the guards' bookkeeping and resuming): the refinement of the selected tensors
(:mod:`lightning_compress.functional.successive_pruning`), a stage's weights and masks, a guarded stage's back-off to
the largest step within budget, the final stream (within a bit budget when asked), coded by ``codec.surp``, and the
plan that tells the artifact where each tensor's slice of it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn

from lightning_compress.callbacks.base import CompressionCallback
from lightning_compress.callbacks.event_guard import EventGuard, judge_event, over_budget
from lightning_compress.callbacks.events import compression_event
from lightning_compress.callbacks.memory import release_freed_memory
from lightning_compress.codec.base import CodecSpec
from lightning_compress.codec.surp import StreamStatistics, decode_stream, encode_with_statistics
from lightning_compress.functional.successive_pruning import (
    SurpResult,
    largest_support,
    magnitude,
    magnitudes,
    refine,
)
from lightning_compress.saving import trial_bytes

__all__ = ["SurpStages"]


class SurpStages(CompressionCallback):
    """The stages and the stream of :class:`~lightning_compress.callbacks.successive_pruning.SuccessivePruning`.

    Its base class; the settings and state it reads are the callback's, declared here.
    """

    # the callback's settings (its arguments, checked there) and state
    stages: list[float]
    bit_budget: int | None
    alpha: float
    refresh: str
    ladder: float
    refine_steps: int
    support_tolerance: float
    backoff_steps: int
    event_guard: EventGuard | None
    history: list[dict[str, float]]
    _names: list[str]
    _stage: int
    _step_cap: float | None
    _stopped: bool
    _stop_reason: str
    _final: dict[str, Any] | None

    def _params(self, pl_module: nn.Module, names: Sequence[str]) -> list[torch.Tensor]:
        params = dict(self.target_module(pl_module).named_parameters())
        return [params[n] for n in names]

    def _value_names(self, pl_module: nn.Module) -> list[str]:
        """The tensors whose values SuccessivePruning stores (the rest went to a value method), in selection order."""
        rep = self.representation(pl_module)
        return [n for n in self._names if rep.owner(n, "values") == self.owner]

    def _sparsity(self, pl_module: nn.Module, names: Sequence[str] | None = None) -> float:
        params = self._params(pl_module, self._names if names is None else names)
        return 1.0 - sum(int(p.count_nonzero()) for p in params) / max(sum(p.numel() for p in params), 1)

    @compression_event("stage")
    def _guarded_stage(self, trainer: pl.Trainer, scheduled: float) -> None:
        """Prune towards ``scheduled`` as far as the guard allows: the step, or the largest part of it within budget.

        The stage is judged on the guard's cached samples, the model right before it against right after it. Over
        budget, the step is bisected between the sparsity before it and its target (from the same weights: the
        training since the last stage is kept); later stages take steps no larger than the one that fit. With no
        step that fits, the sparsity is held where it is for this stage; the next stage tries again.

        A guarded stage writes the refinement's support only: the surviving weights keep their trained values, and
        the stream's values are written once, at the end (our design). Rewriting every survivor to its
        reconstruction, as an unguarded stage does, costs accuracy that the retraining after it wins back, and the
        guard would count it against the stage. In 2-epoch Fashion-MNIST fits (12,000 images) the support-only
        stages compressed more at no greater cost: the MLP 9.6x at 0.42 pt against 6.3x at 0.81 pt (7 and 6 seeds),
        LeNet-5 6.6x at 0.96 pt against 4.5x at 1.34 pt (3 seeds).
        """
        assert self.event_guard is not None  # noqa: S101 - only under the event guard
        pl_module = trainer.lightning_module
        module = self.target_module(pl_module)
        current = self._sparsity(pl_module)
        target = scheduled if self._step_cap is None else min(scheduled, current + self._step_cap)
        if target <= current + 1e-6:
            return
        params = self._params(pl_module, self._names)
        # what a trial may zero: a trial keeps the largest magnitudes of these same weights, at least as many as the
        # full step keeps, so the entries it zeroes are among those the full step zeroes (not a copy of every weight)
        with torch.no_grad():
            lost = [(p != 0) & ~kept for p, kept in zip(params, largest_support(params, target), strict=True)]
            saved = [p.detach()[gone] for p, gone in zip(params, lost, strict=True)]
        saved_masks = {n: m.clone() for n, m in self.holds.support.items()}
        saved_buffers = {n: b.detach().clone() for n, b in module.named_buffers()}

        @torch.no_grad()
        def restore() -> None:
            for param, gone, value in zip(params, lost, saved, strict=True):
                param.masked_scatter_(gone, value)
            buffers = dict(module.named_buffers())
            for name, value in saved_buffers.items():
                buffers[name].copy_(value)
            self.holds.hold_support(module, saved_masks) if saved_masks else self.holds.release()

        guard = self.event_guard

        def put(sparsity: float) -> None:
            self._support_to(pl_module, sparsity)

        chosen = judge_event(self, trainer, guard, put, restore, (current, target), self.backoff_steps)
        if chosen.deferred:
            rank_zero_info(f"SuccessivePruning defers a stage: {guard.chance_line()}; the next stage tries again.")
            return
        sparsity, cost = chosen.position, chosen.cost
        if chosen.held:  # skipped, not stopped: a later stage, on a model further on, tries again
            restore()  # the other ranks hold the same weights
            what = f"stage {self._stage + 1}'s smallest step tried (to {chosen.smallest:.4f})"
            guard.refuse(over_budget(what, guard, cost))
            rank_zero_info(f"SuccessivePruning skips a stage: {guard.last_refusal}; the next stage tries again.")
            return
        if sparsity < target:  # backed off: later steps no larger than the one that fit
            self._step_cap = sparsity - current
        elif self._step_cap is not None:  # a whole step fit: the next may be twice as large
            self._step_cap *= 2
        guard.accept(cost)
        put(sparsity)
        self.changed_weights = True
        figures = {
            "stage": float(self._stage + 1),
            "sparsity": self._sparsity(pl_module),
            "stage_cost": cost.drop,
            "stage_cost_se": cost.se,
        }
        self.history.append(figures)
        self.log_figures(trainer, figures)
        backed = f" (backed off from {target:.4f})" if sparsity < target else ""
        rank_zero_info(
            f"SuccessivePruning stage {self._stage + 1}/{len(self.stages)}: sparsity {figures['sparsity']:.4f}"
            f"{backed}, cost {cost} on the guard's samples."
        )

    # -- stages --------------------------------------------------------------------------------------------------
    def _refine(
        self, tensors: list[torch.Tensor], sparsity: float | None, max_picks: int | None = None, stream: bool = True
    ) -> tuple[SurpResult, list[float]]:
        """Refine the tensors together on their device (``stream``: keep what a bitstream needs)."""
        u, norms = magnitudes(tensors)
        result = refine(
            u,
            target_sparsity=sparsity,
            max_picks=max_picks,
            alpha=self.alpha,
            refresh=self.refresh,
            ladder=self.ladder,
            refine_steps=self.refine_steps if sparsity is not None else 0,
            support_tolerance=self.support_tolerance,
            record_rounds=stream,
            overwrite=True,
        )
        return result, norms

    @staticmethod
    def _encode(tensors: list[torch.Tensor], result: SurpResult) -> tuple[bytes, StreamStatistics]:
        """The stream and its statistics (one walk over the rounds gives both)."""
        signs = torch.cat([t.detach().reshape(-1).sign().to(torch.int8) for t in tensors]).cpu().numpy()
        return encode_with_statistics(result, signs, segments=[t.numel() for t in tensors])

    def _encode_within_budget(
        self, tensors: list[torch.Tensor]
    ) -> tuple[SurpResult, tuple[bytes, StreamStatistics], list[float]]:
        """Largest refinement whose stream fits ``bit_budget`` (binary search over the number of picks)."""
        assert self.bit_budget is not None  # noqa: S101 - only called with a budget

        def attempt(picks: int) -> tuple[SurpResult, tuple[bytes, StreamStatistics], list[float]]:
            result, norms = self._refine(tensors, None, max_picks=picks)
            return result, self._encode(tensors, result), norms

        best = attempt(1)
        lo, hi = 1, sum(t.numel() for t in tensors) * 8
        while lo < hi:
            mid = (lo + hi + 1) // 2
            candidate = attempt(mid)
            if 8 * len(candidate[1][0]) <= self.bit_budget:
                best, lo = candidate, mid
            else:
                hi = mid - 1
        return best

    def _decide_stream(
        self, trainer: pl.Trainer, names: list[str], sparsity: float | None
    ) -> tuple[bytes, list[float], SurpResult, StreamStatistics]:
        """The final refinement, written into every rank's weights.

        Refined on rank 0, broadcast as its stream, norms and statistics (small), decoded on the other ranks. Rank 0
        writes the reconstruction before it codes the stream, so that the reconstruction's float64 vector (two model
        sizes) is gone by then: the signs the stream keeps are those of the written weights, the same on the
        support. Returns the stream, the norms, the refinement (its rounds; rank 0's own, the decoded stream's on
        the other ranks) and the stream's statistics.
        """
        pl_module = trainer.lightning_module
        payload: tuple[bytes, list[float], StreamStatistics] | None = None
        result: SurpResult | None = None
        if trainer.is_global_zero:
            tensors = self._params(pl_module, names)
            if sparsity is None:
                result, (stream, stats), norms = self._encode_within_budget(tensors)
                self._write(pl_module, names, result, norms)
            else:
                result, norms = self._refine(tensors, sparsity)
                self._write(pl_module, names, result, norms)
                result.recon = result.picked = None  # the stream needs the rounds only
                release_freed_memory()
                stream, stats = self._encode(tensors, result)
            payload = (stream, norms, stats)
        payload = self.broadcast(trainer, payload)
        assert payload is not None  # noqa: S101 - broadcast returns rank 0's payload
        if result is None:  # another rank: the decoded stream (its signs are those of the same weights)
            result = decode_stream(payload[0])[0]
            self._write(pl_module, names, result, payload[1])
        return payload[0], payload[1], result, payload[2]

    @torch.no_grad()
    def _write(self, pl_module: nn.Module, names: list[str], result: SurpResult, norms: list[float]) -> None:
        """Put ``sign * recon * norm`` into the named tensors (as the ``surp`` codec decodes it); hold their zeros.

        ``recon`` is float64; the product is taken in float64 and rounded to the tensor's dtype once, so the
        weights equal the decoded stream bit for bit. A pruning stage's result holds the residual instead (one
        float64 vector, not two): each tensor's reconstruction is then its magnitudes, recomputed from the weights
        the refinement read, minus its residual.
        """
        recon = None if result.recon is None else torch.as_tensor(result.recon)
        offset = 0
        masks = dict(self.holds.support)
        for name, param, norm in zip(names, self._params(pl_module, names), norms, strict=True):
            n = param.numel()
            if recon is not None:
                piece = recon[offset : offset + n].to(param.device)
            else:
                assert result.residual is not None  # noqa: S101 - recon or residual, one of the two
                piece = magnitude(param, norm).sub_(result.residual[offset : offset + n].to(param.device))
            kept = piece.reshape(param.shape) != 0
            param.copy_(param.detach().sign().to(torch.float64).mul_(piece.reshape(param.shape)).mul_(norm))
            masks[name] = kept
            offset += n
        self.holds.hold_support(self.target_module(pl_module), masks)

    def _prune_to(self, pl_module: nn.Module, names: list[str], sparsity: float | None) -> SurpResult:
        """One pruning stage's refinement written into the weights, its zeros held.

        A pruning stage writes no stream: every rank refines the same weights (DDP keeps them identical) with
        device-independent decisions, so no bytes are coded, decoded or sent.
        """
        result, norms = self._refine(self._params(pl_module, names), sparsity, stream=False)
        self._write(pl_module, names, result, norms)
        return result

    @torch.no_grad()
    def _support_to(self, pl_module: nn.Module, sparsity: float) -> None:
        """The support a refinement to ``sparsity`` would reach, held; the surviving weights keep their values.

        Found as the largest normalised magnitudes (:func:`largest_support`: the refinement's support, without its
        rounds).
        """
        params = self._params(pl_module, self._names)
        masks = dict(self.holds.support)
        for name, param, kept in zip(self._names, params, largest_support(params, sparsity), strict=True):
            param.mul_(kept)
            masks[name] = kept
        self.holds.hold_support(self.target_module(pl_module), masks)

    @compression_event("stage")
    def _run_stage(self, trainer: pl.Trainer, sparsity: float | None, final: bool = False) -> None:
        pl_module = trainer.lightning_module
        names = self._value_names(pl_module) if final else self._names
        if final and names != self._names:  # some values went to a value method: keep the support they have now
            sparsity = self._sparsity(pl_module, names)
        if not final:
            result = self._prune_to(pl_module, names, sparsity)
            self.changed_weights = True
            figures: dict[str, float] = {"stage": float(self._stage + 1), "sparsity": result.sparsity}
            self.history.append(figures)
            self.log_figures(trainer, figures)
            rank_zero_info(
                f"SuccessivePruning stage {self._stage + 1}/{len(self.stages)}: sparsity {result.sparsity:.4f}."
            )
            return
        stream, norms, result, stats = self._decide_stream(trainer, names, sparsity)
        self.changed_weights = True
        nonzeros, n = stats.nonzeros, result.n
        figures = {
            "stage": float(self._stage),
            "sparsity": 1.0 - nonzeros / max(n, 1),
            "stream_bytes": float(len(stream)),
            "bits_per_param": 8 * len(stream) / n,
            "bits_per_nonzero": 8 * len(stream) / max(nonzeros, 1),
        }
        figures.update(
            entropy_bits_per_param=stats.entropy_bits / n,
            stream_over_entropy=stats.overhead,
            geometric_bits_per_param=stats.geometric_bits / n,
        )
        self._final = {"stream": stream, "norms": norms, "names": names}
        self._attach(pl_module)
        if trainer.is_global_zero:
            figures["artifact_bytes"] = float(self._artifact_bytes(pl_module, names, stream, norms))
        self.history.append(figures)
        self.log_figures(trainer, figures)
        rank_zero_info(
            f"SuccessivePruning final: sparsity {figures['sparsity']:.4f}, stream {len(stream):,} bytes "
            f"({figures['bits_per_param']:.4f} bits/param, {stats.overhead:.4f}x its symbols' entropy)."
        )

    def _plan(self, pl_module: nn.Module, names: list[str], stream: bytes, norms: list[float]) -> dict[str, Any]:
        """Codec options per tensor: its slice of the shared stream and its norm."""
        plan, offset = {}, 0
        for name, param, norm in zip(names, self._params(pl_module, names), norms, strict=True):
            plan[name] = {"stream": stream, "offset": offset, "numel": param.numel(), "norm": norm}
            offset += param.numel()
        return plan

    def _artifact_bytes(self, pl_module: nn.Module, names: list[str], stream: bytes, norms: list[float]) -> int:
        # the weights were written from this refinement just now: the trial skips the codec's decoding check (the
        # stream parsed again, 3.6 s and two model sizes on ResNet-50; the artifact saved later checks every tensor)
        plan = self._plan(pl_module, names, stream, norms)
        codecs = {n: CodecSpec("surp", {**o, "check": False}) for n, o in plan.items()}
        return trial_bytes(self.target_module(pl_module), codecs)

    def _attach(self, pl_module: nn.Module) -> None:
        assert self._final is not None  # noqa: S101 - called once the final stream exists
        names = list(self._final["names"])
        plan = self._plan(pl_module, names, self._final["stream"], self._final["norms"])
        self.representation(pl_module).decide(self.owner, "values", plan)
