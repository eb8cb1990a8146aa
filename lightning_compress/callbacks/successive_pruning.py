"""SuccessivePruning callback.

SuRP (Isik, No, Weissman 2021/22): pruning by successive refinement in stages of increasing sparsity with masked
retraining between them, and a real entropy-coded bitstream (codec ``surp``) for the artifact.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from typing_extensions import override

from lightning_compress.arguments import check_choice, check_number, is_number
from lightning_compress.callbacks.base import CompressionCallback
from lightning_compress.codec.container import CodecSpec, save
from lightning_compress.codec.surp import decode_stream, encode_stream, stream_statistics
from lightning_compress.functional.selection import select_parameters
from lightning_compress.functional.successive_pruning import SurpResult, normalise, refine, sparsity_schedule

__all__ = ["SuccessivePruning"]


class SuccessivePruning(CompressionCallback):
    """Prune by successive refinement during ``fit``, and store the result as a SuRP bitstream.

    Stages of increasing sparsity (default the paper's ``1 - 0.8**k`` list up to ``target_sparsity``) are spread
    over the first ``1 - final_fraction`` of the training steps (``trainer.estimated_stepping_batches``), so the
    target is reached before the end of any fit without tuning. At each stage the selected tensors are refined
    from scratch (per-tensor L2 normalisation, one vector, threshold ``alpha * mean``, quanta subtracted from the
    residual, threshold decay and refresh) until the stage's sparsity; the reconstruction replaces the weights and
    its zeros become the mask. Between stages the mask is enforced: gradients of pruned entries are zeroed in
    ``on_before_optimizer_step`` and the mask re-applied after every optimizer step, so momentum and weight decay
    cannot regrow them (biases and normalisation parameters included when selected).

    At the end of ``fit`` the retrained weights are refined once more to the target and encoded; those are the
    final weights and what :func:`lightning_compress.save` writes with the ``surp`` codec.

    Refinement is vectorised (every candidate above the threshold in one round) and deterministic; decisions are
    taken on rank 0 and broadcast as the bitstream, so every rank holds the same weights.

    Args:
        target_sparsity: final fraction of zeros among the selected tensors, in (0, 1).
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
        parameters: ``"all"`` (paper: every parameter) or ``"weights"`` (Conv/Linear weights only).
        stages: explicit stage sparsities (increasing, the last one is the target); default the paper's list.
        final_fraction: fraction of the training steps after the last stage (fine-tuning at the target).

    Raises:
        ValueError: for an invalid argument (the message names it).

    Example:
        >>> [round(s, 4) for s in SuccessivePruning(target_sparsity=0.9).stages[-3:]]
        [0.8658, 0.8926, 0.9]
    """

    LOG_PREFIX = "surp"

    def __init__(
        self,
        target_sparsity: float = 0.95,
        bit_budget: int | None = None,
        alpha: float = 10.0,
        refresh: str = "ladder",
        ladder: float = 0.9,
        refine_steps: int = 0,
        support_tolerance: float = 0.005,
        parameters: str = "all",
        stages: Sequence[float] | None = None,
        final_fraction: float = 0.2,
    ) -> None:
        super().__init__()
        check_number("target_sparsity", target_sparsity, low=0, high=1, low_open=True, high_open=True)
        check_number("bit_budget", bit_budget, low=64, integer=True, allow_none=True)
        check_number("alpha", alpha, low=0, low_open=True)
        check_choice("refresh", refresh, ("ladder", "mean"))
        check_number("ladder", ladder, low=0, high=1, low_open=True, high_open=True)
        check_number("refine_steps", refine_steps, low=0, integer=True)
        check_number("support_tolerance", support_tolerance, low=0, high=1, high_open=True)
        check_choice("parameters", parameters, ("all", "weights"))
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
        self.parameters = parameters
        self.final_fraction = float(final_fraction)
        self._stage = 0
        self._stage_steps: list[int] = []
        self._mask: list[torch.Tensor] = []
        self._params: list[torch.nn.Parameter] = []
        self._names: list[str] = []
        self._final: dict[str, Any] | None = None
        self.history: list[dict[str, float]] = []

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(target_sparsity=self.target_sparsity, parameters=self.parameters)

    # -- set-up and masking ------------------------------------------------------------------------------------
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        module = self.target_module(pl_module)
        selected = select_parameters(module, self.parameters)
        self._names = [n for n, _ in selected]
        self._params = [p for _, p in selected]
        if not self._stage_steps:
            total = trainer.estimated_stepping_batches
            total = int(total) if math.isfinite(total) else 0
            span = max(int(total * (1.0 - self.final_fraction)), len(self.stages))
            self._stage_steps = [max(1, round(span * (i + 1) / len(self.stages))) for i in range(len(self.stages))]
        if self._mask:  # resumed: masks from the checkpoint
            self._mask = [m.to(p.device) for m, p in zip(self._mask, self._params, strict=True)]
        if self._final is not None:
            self._attach(pl_module)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        for param, mask in zip(self._params, self._mask, strict=False):
            if param.grad is not None:
                param.grad.mul_(mask)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._apply_mask()
        while (
            self._stage < len(self.stages)
            and trainer.global_step >= self._stage_steps[self._stage]
            and not self.should_skip(trainer)
        ):
            self._run_stage(trainer, self.stages[self._stage])
            self._stage += 1

    @torch.no_grad()
    def _apply_mask(self) -> None:
        for param, mask in zip(self._params, self._mask, strict=False):
            param.mul_(mask)

    # -- stages --------------------------------------------------------------------------------------------------
    def _refine(self, sparsity: float | None, max_picks: int | None = None) -> tuple[SurpResult, bytes, list[float]]:
        tensors = [p.detach().double().cpu().numpy() for p in self._params]
        u, signs, norms = normalise(tensors)
        result = refine(
            u,
            target_sparsity=sparsity,
            max_picks=max_picks,
            alpha=self.alpha,
            refresh=self.refresh,
            ladder=self.ladder,
            refine_steps=self.refine_steps if sparsity is not None else 0,
            support_tolerance=self.support_tolerance,
        )
        return result, encode_stream(result, signs, segments=[p.numel() for p in self._params]), norms

    def _encode_within_budget(self) -> tuple[SurpResult, bytes, list[float]]:
        """Largest refinement whose stream fits ``bit_budget`` (binary search over the number of picks)."""
        assert self.bit_budget is not None  # noqa: S101 - only called with a budget
        best = self._refine(None, max_picks=1)
        lo, hi = 1, sum(p.numel() for p in self._params) * 8
        while lo < hi:
            mid = (lo + hi + 1) // 2
            candidate = self._refine(None, max_picks=mid)
            if 8 * len(candidate[1]) <= self.bit_budget:
                best, lo = candidate, mid
            else:
                hi = mid - 1
        return best

    def _decide(self, trainer: pl.Trainer, sparsity: float | None) -> tuple[bytes, list[float]]:
        """Refine on rank 0 and broadcast the stream and norms (small) to every rank."""
        payload: tuple[bytes, list[float]] | None = None
        if trainer.is_global_zero:
            if sparsity is None:
                _, stream, norms = self._encode_within_budget()
            else:
                _, stream, norms = self._refine(sparsity)
            payload = (stream, norms)
        payload = self.broadcast(trainer, payload)
        assert payload is not None  # noqa: S101 - broadcast returns rank 0's payload
        return payload

    @torch.no_grad()
    def _write(self, stream: bytes, norms: list[float]) -> SurpResult:
        result, signs = decode_stream(stream)
        values = signs * result.recon
        offset = 0
        self._mask = []
        for param, norm in zip(self._params, norms, strict=True):
            n = param.numel()
            chunk = torch.from_numpy((values[offset : offset + n] * norm).astype(np.float32)).reshape(param.shape)
            param.copy_(chunk.to(param.device, param.dtype))
            self._mask.append((chunk != 0).to(param.device, param.dtype))
            offset += n
        return result

    def _run_stage(self, trainer: pl.Trainer, sparsity: float | None, final: bool = False) -> None:
        stream, norms = self._decide(trainer, sparsity)
        result = self._write(stream, norms)
        stats = stream_statistics(result, stream)
        figures: dict[str, float] = {
            "stage": float(self._stage + (0 if final else 1)),
            "sparsity": result.sparsity,
            "stream_bytes": float(len(stream)),
            "bits_per_param": 8 * len(stream) / result.n,
            "bits_per_nonzero": 8 * len(stream) / max(result.nonzeros, 1),
            "entropy_bits_per_param": stats.entropy_bits / result.n,
            "stream_over_entropy": stats.overhead,
            "geometric_bits_per_param": stats.geometric_bits / result.n,
        }
        if final:
            self._final = {"stream": stream, "norms": norms}
            self._attach(trainer.lightning_module)
        if trainer.is_global_zero:
            figures["artifact_bytes"] = float(self._artifact_bytes(trainer.lightning_module, stream, norms))
        self.history.append(figures)
        self.log_figures(trainer, figures)
        rank_zero_info(
            f"SuccessivePruning {'final' if final else f'stage {self._stage + 1}/{len(self.stages)}'}: sparsity "
            f"{result.sparsity:.4f}, stream {len(stream):,} bytes ({figures['bits_per_param']:.4f} bits/param, "
            f"{stats.overhead:.4f}x its symbols' entropy)."
        )

    def _plan(self, stream: bytes, norms: list[float]) -> dict[str, CodecSpec]:
        plan, offset = {}, 0
        for name, param, norm in zip(self._names, self._params, norms, strict=True):
            plan[name] = CodecSpec("surp", {"stream": stream, "offset": offset, "numel": param.numel(), "norm": norm})
            offset += param.numel()
        return plan

    def _artifact_bytes(self, pl_module: pl.LightningModule, stream: bytes, norms: list[float]) -> int:
        module = self.target_module(pl_module)
        with tempfile.TemporaryDirectory() as tmp:
            return save(module, Path(tmp) / "stage.lcz", codecs=self._plan(stream, norms)).stat().st_size

    def _attach(self, pl_module: pl.LightningModule) -> None:
        assert self._final is not None  # noqa: S101 - called once the final stream exists
        self.set_codec_plan(self.target_module(pl_module), self._plan(self._final["stream"], self._final["norms"]))

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.should_skip(trainer):
            return
        while self._stage < len(self.stages) - 1:  # fits too short for the schedule still reach the target
            self._run_stage(trainer, self.stages[self._stage])
            self._stage += 1
        self._stage = len(self.stages)
        self._run_stage(trainer, None if self.bit_budget is not None else self.target_sparsity, final=True)

    # -- state -------------------------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "stage": self._stage,
            "stage_steps": list(self._stage_steps),
            "masks": [
                torch.from_numpy(np.packbits(m.detach().cpu().numpy().astype(bool).reshape(-1))) for m in self._mask
            ],
            "mask_shapes": [list(m.shape) for m in self._mask],
            "final_stream": None
            if self._final is None
            else torch.frombuffer(bytearray(self._final["stream"]), dtype=torch.uint8),
            "final_norms": None if self._final is None else list(self._final["norms"]),
            "history": list(self.history),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._stage = int(state_dict.get("stage", 0))
        self._stage_steps = list(state_dict.get("stage_steps", []))
        self._mask = []
        for packed, shape in zip(state_dict.get("masks", []), state_dict.get("mask_shapes", []), strict=True):
            n = math.prod(shape)
            bits = np.unpackbits(packed.numpy())[:n].astype(np.float32)
            self._mask.append(torch.from_numpy(bits).reshape(shape))
        stream = state_dict.get("final_stream")
        self._final = (
            None if stream is None else {"stream": stream.numpy().tobytes(), "norms": state_dict["final_norms"]}
        )
        self.history = list(state_dict.get("history", []))
