"""The Ternarization callback: weights (and optionally activations) in {0, +-1} x scale (Gu et al. 2022/24).

Two modes. ``qat`` ternarises a trainable network: its Linear/Conv2d layers are swapped, in ``setup``, for twins
that share their parameters and use ternary weights in the forward pass (straight-through gradients); optional step
activations replace its ReLUs, initialised by NTK moment matching, with learnable levels and thresholds (the swap is
in :mod:`.swap`). ``ntk`` is the paper's method on a
:class:`~lightning_compress.models.random_features.RandomFeatureMLP`: moment-matched step activations and random
sparse ternary hidden weights replace the Gaussian ones before training; only the head trains. Either way the
artifact stores the ternary tensors with the ``ternary`` codec; this room keeps the arguments, the ``ntk`` set-up,
the bake at the window's end, the figures and resuming.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from lightning_compress.arguments import check_bool, check_choice, check_names, check_number
from lightning_compress.callbacks.events import compression_event
from lightning_compress.callbacks.ternarization.swap import TernarySwap
from lightning_compress.codec.base import CodecSpec
from lightning_compress.functional.ternarization import (
    StepFunction,
    sparse_ternary,
)
from lightning_compress.layers import (
    StepActivation,
    TernaryMixin,
    TernaryMultiheadAttention,
    dense_layer,
    ternary_tensors,
)
from lightning_compress.models.random_features import RandomFeatureMLP, match_step_activations
from lightning_compress.module import LR_SCALE_ATTR, is_lr_scale
from lightning_compress.saving import trial_bytes

__all__ = ["Ternarization"]

log = logging.getLogger(__name__)

_LAYER_CHOICES = ("auto", "ternary", "fp32")


class Ternarization(TernarySwap):
    """Ternary weights and activations during ``fit``, stored with the ``ternary`` codec.

    ``Ternarization()`` on any network ternarises every ``nn.Linear``/``nn.Conv2d`` (quantization-aware training
    with ternary-weight-network thresholds and one scale per output channel); the first and last layers stay fp32
    only when they are small (under 10% of the weights: the stem and head of a CNN, not the first layer of an MLP).

    Args:
        mode: ``"qat"`` (train with ternary weights) or ``"ntk"`` (NTK-LC on a random-feature MLP).
        rule: qat threshold rule, ``"twn"`` (``0.7 * mean|w|``) or ``"sparsity"`` (reach ``sparsity``).
        sparsity: qat: fraction of zeros with ``rule="sparsity"``; ntk: fraction of zeros of the random ternary
            weights (default 0.95).
        per_channel: qat: one scale (and threshold) per output channel instead of per tensor.
        layers: qat: names of the modules to ternarise (default every Linear/Conv2d).
        first_layer: qat: ``"auto"``, ``"ternary"`` or ``"fp32"`` for the first Linear/Conv2d.
        last_layer: qat: the same for the last one.
        activations: qat: replace every ``nn.ReLU`` by a moment-matched step activation with learnable levels
            and thresholds: ``"binary"`` (or ``True``; the paper's two-level form, values ``{0, b}``) or
            ``"ternary"`` (a rising staircase ``{0, b1, b2}``, our design); ``False`` keeps the ReLUs. ntk mode
            uses ``ntk_activations`` instead.
        calibration_batches: training batches used to measure input scales (ntk: the data normalisation; qat with
            ``activations``: each ReLU's input scale).
        restarts: seeded restarts of the moment-matching solver.
        seed: seed of the solver restarts and of the ntk random weights (layer ``i`` uses ``seed + i``).
        storage: ntk: the artifact stores the hidden weights as ``"symbols"`` (entropy-coded, positions
            included: the honest count) or as their generator ``"seed"`` (the true minimum). Both sizes are logged.
        ntk_activations: ntk: ``"step"`` (the paper: moment-matched two-level step activations), ``"staircase"``
            (our design: the rising three-value staircase ``{0, b1, b1 + b2}`` of qat mode, least-squares matched
            on every layer) or ``"original"`` (keep the network's activation, only the hidden weights become sparse
            ternary; the centring constants follow the original activation).
        ntk_learnable_activations: ntk (our design): the matched step activations' levels and thresholds train with
            the head (a few scalars per layer, straight-through ramp for the thresholds); the paper freezes them.
        start: qat: where training with ternary weights starts, as a fraction of the fit's optimizer steps (default
            0, or after the structure and support methods when composed). Layers are swapped for their ternary
            twins there (with ``activations``, the optimizers are built again then: single device).
        end: qat: where the ternary values are fixed into the weights (default 1, the end of ``fit``); after it
            they are held.
        activation_lr_scale: learning rate of the learnable step activations' levels and thresholds, as a multiple
            of the optimizer's (our design: they are a few scalars that every feature shares; below 1 they settle
            more steadily, see the README's measurement). It is set as :data:`lightning_compress.module.LR_SCALE_ATTR`
            on each step activation; :class:`~lightning_compress.ImageClassifier` honours it, and your own module
            does with ``torch.optim.Adam(lightning_compress.param_groups(self, lr=...))``. A warning says when it is
            not.

    Raises:
        ValueError: for an invalid argument (the message names it).

    Examples:
        >>> Ternarization(mode="ntk").sparsity
        0.95
    """

    LOG_PREFIX = "ternary"
    ASPECT = "values"

    def __init__(
        self,
        mode: str = "qat",
        rule: str = "twn",
        sparsity: float | None = None,
        per_channel: bool = True,
        layers: Sequence[str] | None = None,
        first_layer: str = "auto",
        last_layer: str = "auto",
        activations: bool | str = False,
        calibration_batches: int = 8,
        restarts: int = 30,
        seed: int = 0,
        storage: str = "symbols",
        ntk_activations: str = "step",
        ntk_learnable_activations: bool = False,
        activation_lr_scale: float = 1.0,
        start: float | None = None,
        end: float | None = None,
    ) -> None:
        super().__init__(start=start, end=end)
        check_choice("mode", mode, ("qat", "ntk"))
        check_choice("rule", rule, ("twn", "sparsity"))
        check_number("sparsity", sparsity, low=0, high=1, high_open=True, allow_none=True)
        if mode == "qat" and rule == "sparsity" and sparsity is None:
            raise ValueError("`sparsity` is required with rule='sparsity' (a fraction of zeros in [0, 1)).")
        check_bool("per_channel", per_channel)
        check_choice("first_layer", first_layer, _LAYER_CHOICES)
        check_choice("last_layer", last_layer, _LAYER_CHOICES)
        check_names("layers", layers)
        check_number("calibration_batches", calibration_batches, low=1, integer=True)
        check_number("restarts", restarts, low=1, integer=True)
        check_number("seed", seed, low=0, integer=True)
        check_choice("activations", activations, (False, True, "binary", "ternary"))
        check_choice("storage", storage, ("symbols", "seed"))
        check_choice("ntk_activations", ntk_activations, ("step", "staircase", "original"))
        check_bool("ntk_learnable_activations", ntk_learnable_activations)
        if not is_lr_scale(activation_lr_scale):
            raise ValueError(f"`activation_lr_scale` must be a number > 0, got {activation_lr_scale!r}.")
        learnable = ntk_learnable_activations if mode == "ntk" else activations is not False
        if activation_lr_scale != 1.0 and not learnable:
            raise ValueError(
                "`activation_lr_scale` applies to learnable step activations: set `activations` (qat) or "
                "`ntk_learnable_activations=True` (ntk), or leave it at 1.0."
            )
        self.activation_lr_scale = float(activation_lr_scale)
        self.ntk_activations = ntk_activations
        self.ntk_learnable_activations = ntk_learnable_activations
        self.mode = mode
        self.rule = rule
        self.sparsity = float(sparsity) if sparsity is not None else (0.95 if mode == "ntk" else None)
        self.per_channel = bool(per_channel)
        self.layers = list(layers) if layers is not None else None
        self.first_layer, self.last_layer = first_layer, last_layer
        self.activations: str | None = "binary" if activations is True else (activations or None)
        self.calibration_batches = calibration_batches
        self.restarts = restarts
        self.seed = seed
        self.storage = storage
        self.ternarized: list[str] = []
        self.residuals: list[float] = []
        self._baked = False
        self._swapped = False
        #: step activation name -> its surrogate-gradient half-width (kept for an exact resume)
        self._ramps: dict[str, float] = {}
        self._resume_hook: Any = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(mode=self.mode, sparsity=self.sparsity)

    # -- set-up: structural changes happen before optimizers exist ---------------------------------------------
    @override
    def planned_events(self, window: tuple[float, float], steps: tuple[int, int] | None) -> str:
        where = f"at step {steps[0]}" if steps is not None else f"at {window[0]:g} of the fit"
        where = "at the start" if window[0] == 0 else where
        return f"{self.mode}: layers swapped {where}, ternary values baked at the window's end"

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        module = self.target_module(pl_module)
        if self.mode == "qat":
            names = self.ternarized or self._tensors_of(module, self._qat_layers(module))
            self.claim(pl_module, "values", names, kind="ternary")
        # under fast_dev_run nothing is compressed, so nothing is swapped in either (it would never be baked)
        if self._swapped or self._baked or self.should_skip(trainer):
            return
        if self.mode == "ntk":
            self._setup_ntk(trainer, module)
            self._swapped = True
        elif self.window[0] == 0.0:  # before the optimizers exist: step activations' parameters join them
            self._setup_qat(trainer, module)
        elif self.activations and self._resume_hook is None:
            # a checkpoint taken after the window opened holds step activations the fresh model lacks: put them in
            # (their values come from the checkpoint) just before Lightning loads it
            self._resume_hook = pl_module.register_load_state_dict_pre_hook(self._insert_saved_activations)

    @override
    def before_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.mode != "qat" or self._swapped or self._baked:
            return
        if trainer.global_step >= self.window_steps()[0]:  # the window opens: ternary twins from now on
            self._setup_qat(trainer, self.target_module(pl_module))
            if self.activations:
                if trainer.world_size > 1:
                    raise RuntimeError(
                        "Ternarization(activations=..., start>0) adds parameters mid-fit, which DDP cannot take; use "
                        "start=0 or a single device."
                    )
                self.rebuild_optimizers(trainer)

    @override
    def act(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._swapped and not self._baked and self.window_ended_mid_fit(trainer):
            self._finish_values(trainer, pl_module)

    # ntk ---------------------------------------------------------------------------------------------------------
    @compression_event("swap")
    def _setup_ntk(self, trainer: pl.Trainer, module: nn.Module) -> None:
        nets = [m for m in module.modules() if isinstance(m, RandomFeatureMLP)]
        if len(nets) != 1:
            raise TypeError(
                "Ternarization(mode='ntk') compresses one lightning_compress RandomFeatureMLP (zoo models 'rf_mlp', "
                f"'rf_vgg_cifar'); found {len(nets)} in {type(module).__name__}. Use mode='qat' for other networks."
            )
        net = nets[0]
        stats: tuple[torch.Tensor, torch.Tensor, list[StepFunction]] | None = None
        if trainer.is_global_zero:
            with torch.no_grad():
                net.calibrate([net.features(x.float()) for x in self._calibration_inputs(trainer)])
            steps_matched = self._match_ntk(net) if self.ntk_activations != "original" else []
            stats = (net.input_mean.clone(), net.input_scale.clone(), steps_matched)
        stats = self.broadcast(trainer, stats)
        assert stats is not None  # noqa: S101 - broadcast returns rank 0's value
        mean, scale, steps = stats
        with torch.no_grad():
            net.input_mean.copy_(mean)
            net.input_scale.copy_(scale)
            for i, step in enumerate(steps):
                net.activations[i] = self._step_activation(step, learnable=self.ntk_learnable_activations)
            for i, weight in enumerate(net.hidden_weights()):
                weight.copy_(sparse_ternary(tuple(weight.shape), self._ntk_sparsity, self.seed + i))
                weight.requires_grad_(False)
        net.refresh_centers()
        self.ternarized = [f"{self._prefix(module, net)}hidden.{i}.weight" for i in range(len(net.hidden))]
        self.residuals = [s.residual for s in steps]
        self.claim(module, "values", self.ternarized, kind="ternary")
        self.representation(module).decide(
            self.owner, "values", {n: s.options for n, s in self._ntk_plan(self.storage).items()}
        )
        rank_zero_info(
            f"Ternarization(ntk, {self.ntk_activations} activations): {len(steps)} step activations matched (residuals "
            f"{', '.join(f'{r:.2e}' for r in self.residuals)}), hidden weights ternary at sparsity "
            f"{self._ntk_sparsity}."
        )

    @property
    def _ntk_sparsity(self) -> float:
        return float(self.sparsity if self.sparsity is not None else 0.95)

    @staticmethod
    def _prefix(root: nn.Module, sub: nn.Module) -> str:
        name = next(n for n, m in root.named_modules() if m is sub)
        return f"{name}." if name else ""

    def _match_ntk(self, net: RandomFeatureMLP) -> list[StepFunction]:
        return match_step_activations(net, self.ntk_activations == "staircase", self.restarts, self.seed)

    def _ntk_plan(self, storage: str) -> dict[str, CodecSpec]:
        return {
            name: CodecSpec("ternary", {"per_channel": False})
            if storage == "symbols"
            else CodecSpec("ternary", {"seed": self.seed + i, "sparsity": self._ntk_sparsity})
            for i, name in enumerate(self.ternarized)
        }

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if self._baked and self.mode == "qat":  # resumed after its window: the ternary values are held again
            self._bake_and_hold(self.target_module(pl_module))
        for name, ramp in self._ramps.items():  # resumed: the surrogate gradients' widths, as before the crash
            activation = self.target_module(pl_module).get_submodule(name)
            if isinstance(activation, StepActivation):
                activation.ramp = float(ramp)
        if self.activation_lr_scale == 1.0:
            return
        # each tagged trainable parameter must sit in an optimizer group carrying its module's scale
        wanted = {
            id(p): getattr(m, LR_SCALE_ATTR)
            for m in pl_module.modules()
            if hasattr(m, LR_SCALE_ATTR)
            for p in m.parameters(recurse=False)
            if p.requires_grad
        }
        placed = {id(p): g.get("lr_scale") for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
        if any(placed.get(key) != scale for key, scale in wanted.items()):
            rank_zero_warn(
                f"Ternarization(activation_lr_scale={self.activation_lr_scale}) is not applied: the optimizer does not "
                "group the step activations' parameters by their scale. Build it from "
                "`lightning_compress.param_groups(self, lr=...)` in configure_optimizers."
            )

    # -- end of the window: ternary values into the weights, plain layers back ------------------------------------
    @override
    def finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._baked and self._swapped and self.ternarized:
            self._finish_values(trainer, pl_module)

    @compression_event("bake")
    def _finish_values(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        module = self.target_module(pl_module)
        if self.mode == "qat":
            self._bake_and_hold(module)
        self._baked = True
        figures = self._figures(module)
        self.log_figures(trainer, figures)
        rank_zero_info(
            "Ternarization: " + ", ".join(f"{k} {v:,.4g}" for k, v in figures.items() if not k.startswith("residual"))
        )

    def _bake_and_hold(self, module: nn.Module) -> None:
        """Ternary values into the weights (plain layers back), recorded in the representation and held."""
        self._bake(module)
        self.representation(module).decide(
            self.owner, "values", {n: {"per_channel": self.per_channel} for n in self.ternarized}
        )
        self.holds.hold_values(module, self.ternarized)  # the ternary values stay for the rest of the fit

    @torch.no_grad()
    def _bake(self, module: nn.Module) -> None:
        params = dict(module.named_parameters())
        twins = [(n, m) for n, m in module.named_modules() if isinstance(m, TernaryMixin | TernaryMultiheadAttention)]
        for name, layer in twins:
            if isinstance(layer, TernaryMultiheadAttention):
                for tensor in ternary_tensors(layer):
                    params[f"{name}.{tensor}"].copy_(layer.ternary_weight(tensor).detach())
            else:
                params[f"{name}.weight"].copy_(layer.ternary_weight().detach())
            module.set_submodule(name, dense_layer(layer))  # type: ignore[arg-type]

    def _figures(self, module: nn.Module) -> dict[str, float]:
        params = dict(module.named_parameters())
        weights = [params[n].detach() for n in self.ternarized]
        numel = sum(w.numel() for w in weights)
        nonzero = sum(int(w.count_nonzero()) for w in weights)
        dense_bytes = 4 * sum(p.numel() for p in module.parameters())
        figures = {
            "layers": float(len(weights)),
            "weights": float(numel),
            "sparsity": 1.0 - nonzero / max(numel, 1),
            "fp32_bytes": float(dense_bytes),
        }
        storages = ("symbols", "seed") if self.mode == "ntk" else ("symbols",)
        for storage in storages:
            size = self._artifact_bytes(module, storage)
            figures[f"artifact_bytes_{storage}"] = float(size)
            figures[f"ratio_{storage}"] = dense_bytes / size
        if self.mode == "ntk":
            figures.update(self._paper_convention(module, nonzero))
        for i, r in enumerate(self.residuals):
            figures[f"residual_{i}"] = r
        return figures

    def _paper_convention(self, module: nn.Module, nonzero: int) -> dict[str, float]:
        """NTK-LC's memory count: dense 32 bits per weight and neuron, compressed 1 bit per non-zero and neuron.

        Counted over the random layers and the head (the authors' ``memory.py``, first layer included on both
        sides, head at 32 bits).
        """
        net = next(m for m in module.modules() if isinstance(m, RandomFeatureMLP))
        hidden = sum(w.numel() for w in net.hidden_weights())
        neurons = sum(w.shape[0] for w in net.hidden_weights())
        head = sum(p.numel() for p in net.head.parameters())
        dense_bits = 32 * (hidden + neurons + head)
        compressed_bits = nonzero + neurons + 32 * head
        return {"paper_dense_bits": float(dense_bits), "paper_ratio": dense_bits / compressed_bits}

    def _artifact_bytes(self, module: nn.Module, storage: str) -> int:
        return trial_bytes(module, dict(self._ntk_plan(storage)) if self.mode == "ntk" else None)

    # -- state ---------------------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        # not whether layers are swapped: a resumed fit swaps again in setup/before_step (fresh modules)
        return {
            "ternarized": list(self.ternarized),
            "residuals": list(self.residuals),
            "baked": self._baked,
            "ramps": dict(self._ramps),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.residuals = list(state_dict.get("residuals", []))
        self._baked = bool(state_dict.get("baked", False))
        self.ternarized = list(state_dict.get("ternarized", self.ternarized))
        self._ramps = dict(state_dict.get("ramps", {}))
