"""Ternarization's swap (mode ``qat``): which layers go ternary, their ternary twins, and step activations for ReLUs.

:class:`TernarySwap` is the base of :class:`~lightning_compress.callbacks.ternarization.Ternarization` (which keeps
its arguments, the ``ntk`` mode, the bake at the window's end, the figures and resuming): the default's choice of
layers (frozen, tied and depthwise ones left alone; small end layers kept fp32), the swap for twins that share the
layers' parameters, the ReLUs replaced by step activations matched to their inputs' scale, and the swap again when a
resumed fit's checkpoint holds step activations.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn

from lightning_compress.callbacks.base import CompressionCallback
from lightning_compress.callbacks.events import compression_event
from lightning_compress.functional.forward import call_forward
from lightning_compress.functional.ternarization import StepFunction, match_step_activation, relu_moments
from lightning_compress.layers import StepActivation, ternary_layer, ternary_tensors
from lightning_compress.module import LR_SCALE_ATTR

__all__ = ["TernarySwap"]

#: With ``first_layer``/``last_layer="auto"``, an end layer stays fp32 when it holds less than this share of weights.
_AUTO_END_SHARE = 0.1


class TernarySwap(CompressionCallback):
    """The ``qat`` swap of :class:`~lightning_compress.callbacks.ternarization.Ternarization` (its base class).

    The settings and state it reads are the callback's, declared here.
    """

    # the callback's settings (its arguments, checked there) and state
    mode: str
    rule: str
    sparsity: float | None
    per_channel: bool
    layers: list[str] | None
    first_layer: str
    last_layer: str
    activations: str | None
    calibration_batches: int
    restarts: int
    seed: int
    activation_lr_scale: float
    ternarized: list[str]
    residuals: list[float]
    _swapped: bool
    _ramps: dict[str, float]

    def _calibration_inputs(self, trainer: pl.Trainer) -> Iterator[torch.Tensor]:
        return self.training_inputs(
            trainer, trainer.lightning_module, self.calibration_batches, f"Ternarization(mode={self.mode!r})"
        )

    def _qat_layers(self, module: nn.Module) -> list[str]:
        kinds = (nn.Linear, nn.Conv2d, nn.MultiheadAttention)
        candidates = [n for n, m in module.named_modules() if type(m) in kinds]
        params = dict(module.named_parameters(remove_duplicate=False))  # a tied weight under each of its names
        tensors = {n: [f"{n}.{t}" for t in ternary_tensors(module.get_submodule(n))] for n in candidates}
        if self.layers is None:
            why = self._left_alone(module, candidates, tensors, params)
            candidates = [n for n in candidates if n not in why]
        if self.layers is not None:
            unknown = sorted(set(self.layers) - set(candidates))
            if unknown:
                raise ValueError(
                    f"`layers` names {unknown}, which are not nn.Linear/nn.Conv2d/nn.MultiheadAttention modules of the "
                    f"model; available: {candidates}."
                )
            return [n for n in candidates if n in self.layers]
        if not candidates:
            raise ValueError(
                "Ternarization found no nn.Linear/nn.Conv2d/nn.MultiheadAttention layer to ternarise (frozen layers, "
                "weights tied to another module and depthwise convolutions are left alone; name layers in `layers=` "
                "to ternarise them anyway)."
            )
        sizes = {n: sum(params[t].numel() for t in tensors[n]) for n in candidates}
        total = sum(sizes.values())
        chosen = list(candidates)
        for name, choice in ((candidates[0], self.first_layer), (candidates[-1], self.last_layer)):
            keep_fp32 = choice == "fp32" or (choice == "auto" and sizes[name] < _AUTO_END_SHARE * total)
            if keep_fp32 and name in chosen and len(chosen) > 1:
                chosen.remove(name)
        return chosen

    @staticmethod
    def _left_alone(
        module: nn.Module, candidates: list[str], tensors: dict[str, list[str]], params: dict[str, nn.Parameter]
    ) -> dict[str, str]:
        """Layers the default leaves as they are, with why: frozen, tied to another module, or depthwise.

        A depthwise convolution holds a few weights per channel (about 2% of a MobileNetV2) that ternary values
        cost accuracy for almost no bytes (our design; the user can still name it in ``layers``).
        """
        uses: dict[int, int] = {}
        for p in params.values():
            uses[id(p)] = uses.get(id(p), 0) + 1
        why: dict[str, str] = {}
        for n in candidates:
            weights = [params[t] for t in tensors[n]]
            layer = module.get_submodule(n)
            if not all(w.requires_grad for w in weights):
                why[n] = "frozen"
            elif any(uses[id(w)] > 1 for w in weights):
                why[n] = "tied"
            elif isinstance(layer, nn.Conv2d) and layer.groups > 1 and layer.groups == layer.in_channels:
                why[n] = "depthwise"
        if why:
            counts = ", ".join(f"{sum(1 for v in why.values() if v == w)} {w}" for w in sorted(set(why.values())))
            shown = ", ".join(list(why)[:6]) + (", ..." if len(why) > 6 else "")
            rank_zero_info(
                f"Ternarization leaves layers as they are: {counts} ({shown}); name them in `layers=` to ternarise "
                "them anyway."
            )
        return why

    @staticmethod
    def _tensors_of(module: nn.Module, layers: list[str]) -> list[str]:
        return [f"{n}.{t}" for n in layers for t in ternary_tensors(module.get_submodule(n))]

    @compression_event("swap")
    def _setup_qat(self, trainer: pl.Trainer, module: nn.Module) -> None:
        names = self._qat_layers(module)
        options = {"rule": self.rule, "sparsity": self.sparsity, "per_channel": self.per_channel}
        self.ternarized = self._tensors_of(module, names)
        for name in names:
            module.set_submodule(name, ternary_layer(module.get_submodule(name), **options))
        self._swapped = True
        if self.activations:
            self._replace_relus(trainer, module)
        rank_zero_info(
            f"Ternarization(qat): {len(names)} layers ternary ({', '.join(names)})"
            + (f", {len(self.residuals)} ReLUs replaced by step activations." if self.activations else ".")
        )

    def _insert_saved_activations(self, pl_module: nn.Module, state: dict[str, Any], prefix: str, *_: Any) -> None:
        module = self.target_module(pl_module)
        root = next(n for n, m in pl_module.named_modules() if m is module)
        root = f"{prefix}{root}." if root else prefix
        relus = [n for n, m in module.named_modules() if isinstance(m, nn.ReLU) and f"{root}{n}.thresholds" in state]
        if not relus or self._swapped:
            return
        options = {"rule": self.rule, "sparsity": self.sparsity, "per_channel": self.per_channel}
        names = self._qat_layers(module)
        self.ternarized = self._tensors_of(module, names)
        for name in names:
            module.set_submodule(name, ternary_layer(module.get_submodule(name), **options))
        for name in relus:
            thresholds, amplitudes = state[f"{root}{name}.thresholds"], state[f"{root}{name}.amplitudes"]
            activation = StepActivation(thresholds.numel(), amplitudes.numel(), learnable=True)
            if self.activation_lr_scale != 1.0:
                setattr(activation, LR_SCALE_ATTR, self.activation_lr_scale)
            module.set_submodule(name, activation)
        self._swapped = True

    def _replace_relus(self, trainer: pl.Trainer, module: nn.Module) -> None:
        relus = [n for n, m in module.named_modules() if isinstance(m, nn.ReLU)]
        if not relus:
            raise ValueError("Ternarization(activations=True) found no nn.ReLU module to replace.")
        steps: list[StepFunction] | None = None
        if trainer.is_global_zero:
            scales = self._input_scales(trainer, module, relus)
            steps = [
                match_step_activation(
                    relu_moments(t),
                    t,
                    staircase=self.activations == "ternary",
                    restarts=self.restarts,
                    seed=self.seed + i,
                )
                for i, t in enumerate(scales)
            ]
        steps = self.broadcast(trainer, steps)
        assert steps is not None  # noqa: S101 - broadcast returns rank 0's value
        for name, step in zip(relus, steps, strict=True):
            ramp = max(abs(step.thresholds[-1] - step.thresholds[0]) / 2, 1e-3)
            module.set_submodule(name, self._step_activation(step, learnable=True, ramp=ramp))
            self._ramps[name] = ramp
        self.residuals = [s.residual for s in steps]

    def _step_activation(self, step: StepFunction, learnable: bool, ramp: float = 0.5) -> StepActivation:
        activation = StepActivation.from_step(step, learnable=learnable, ramp=ramp)
        if learnable and self.activation_lr_scale != 1.0:
            setattr(activation, LR_SCALE_ATTR, self.activation_lr_scale)
        return activation

    def _input_scales(self, trainer: pl.Trainer, module: nn.Module, names: list[str]) -> list[float]:
        """RMS of each named module's input over the calibration batches (the ``tau`` its moments are taken at)."""
        sums = dict.fromkeys(names, 0.0)
        counts = dict.fromkeys(names, 0)

        def hook(name: str) -> Any:
            def record(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
                sums[name] += float(args[0].double().pow(2).sum())
                counts[name] += args[0].numel()

            return record

        handles = [module.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                for x in self._calibration_inputs(trainer):
                    call_forward(module, x.float() if isinstance(x, torch.Tensor) else x)
        finally:
            module.train(was_training)
            for h in handles:
                h.remove()
        return [math.sqrt(sums[n] / max(counts[n], 1)) or 1.0 for n in names]
