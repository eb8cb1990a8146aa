"""What every compression callback shares: skip rules, the module to compress, logging, rank handling, codec plans."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from typing_extensions import override

from lightning_compress.codec.container import CODEC_PLAN_ATTR, CodecSpec, artifact_module
from lightning_compress.functional.forward import (
    ForwardInputs,
    call_forward,
    default_forward_inputs,
    leading,
    to_device,
)

__all__ = ["FORWARD_INPUTS_ATTR", "CompressionCallback"]

#: Method a LightningModule may define, ``lc_forward_inputs(batch)``: the forward's arguments for a training batch.
FORWARD_INPUTS_ATTR = "lc_forward_inputs"
#: Strategies that shard parameters: a callback that reads and rewrites whole tensors cannot work under them.
_SHARDING_STRATEGIES = ("FSDP", "DeepSpeed", "ModelParallel")

log = logging.getLogger(__name__)


class CompressionCallback(Callback):
    """Base of the compression callbacks.

    Subclasses compress :meth:`target_module` (the module an artifact stores: the LightningModule's backbone when
    it exposes ``lc_artifact_module``, else the LightningModule itself), report their figures through
    :meth:`summary` (the ``lcompress`` job merges them into its metrics) and tell :func:`lightning_compress.save`
    which codec to use per tensor with :meth:`set_codec_plan`.
    """

    #: Prefix of the keys this callback logs, e.g. ``"weight_sharing"``.
    LOG_PREFIX = "compress"

    def __init__(self, forward_inputs: ForwardInputs | None = None) -> None:
        if forward_inputs is not None and not callable(forward_inputs):
            raise ValueError(
                f"`forward_inputs` must be None or a function from a batch to the forward's arguments (a tensor, a "
                f"tuple of positional arguments or a dict of keyword arguments), got {forward_inputs!r}."
            )
        self.forward_inputs = forward_inputs
        self._summary: dict[str, float] = {}

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Refuse strategies that shard parameters (FSDP, DeepSpeed): every method reads whole tensors."""
        name = type(trainer.strategy).__name__
        if stage == "fit" and any(s.lower() in name.lower() for s in _SHARDING_STRATEGIES):
            raise ValueError(
                f"{type(self).__name__} reads and rewrites whole parameter tensors, which the {name} strategy shards "
                "across processes; use strategy='ddp' (or a single device)."
            )

    @staticmethod
    def target_module(pl_module: nn.Module) -> nn.Module:
        """The module to compress (and that artifacts store)."""
        return artifact_module(pl_module)

    @staticmethod
    def should_skip(trainer: pl.Trainer) -> bool:
        """No compression during the sanity check, outside ``fit`` or under ``fast_dev_run``."""
        fast_dev_run = getattr(trainer, "fast_dev_run", False)
        return bool(trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or fast_dev_run)

    def summary(self) -> dict[str, float]:
        """The figures of the last compression step, keys prefixed with :attr:`LOG_PREFIX`."""
        return dict(self._summary)

    def log_figures(self, trainer: pl.Trainer, figures: Mapping[str, float]) -> None:
        """Record figures in :meth:`summary` and send them to every logger.

        Goes through the loggers directly, so it works in hooks where ``self.log`` is forbidden.
        """
        prefixed = {f"{self.LOG_PREFIX}/{k}": float(v) for k, v in figures.items()}
        self._summary.update(prefixed)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(prefixed, step=trainer.global_step)

    @staticmethod
    def set_codec_plan(module: nn.Module, plan: Mapping[str, CodecSpec]) -> None:
        """Ask :func:`lightning_compress.save` to write the named tensors with the given codecs."""
        current: dict[str, CodecSpec] = dict(getattr(module, CODEC_PLAN_ATTR, {}))
        current.update(plan)
        object.__setattr__(module, CODEC_PLAN_ATTR, current)

    @staticmethod
    def broadcast(trainer: pl.Trainer, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (every rank must call this)."""
        return trainer.strategy.broadcast(obj, src=0)

    @staticmethod
    def has_validation(trainer: pl.Trainer, pl_module: nn.Module, needs_step: bool = True) -> bool:
        """Whether ``fit`` will run a validation loop (with ``validation_step`` unless ``needs_step`` is False)."""
        from lightning.pytorch.utilities.model_helpers import is_overridden

        source = getattr(trainer.fit_loop.epoch_loop.val_loop, "_data_source", None)
        defined = source is not None and source.is_defined()
        step = is_overridden("validation_step", pl_module) or not needs_step
        return bool(defined and step and trainer.limit_val_batches != 0)

    def forward_inputs_fn(self, pl_module: nn.Module) -> ForwardInputs:
        """How a batch becomes the forward's arguments.

        ``forward_inputs``, else the LightningModule's ``lc_forward_inputs(batch)``, else the batch's first element.
        """
        if self.forward_inputs is not None:
            return self.forward_inputs
        hook = getattr(pl_module, FORWARD_INPUTS_ATTR, None)
        return hook if callable(hook) else default_forward_inputs

    def training_inputs(self, trainer: pl.Trainer, pl_module: nn.Module, batches: int, who: str) -> Iterator[Any]:
        """The forward's arguments for the first ``batches`` training batches, for calibration.

        Raises:
            RuntimeError: the fit has no training data loader (``who`` names the caller).
        """
        source = getattr(trainer.fit_loop, "_data_source", None)
        loader = source.dataloader() if source is not None else None
        if loader is None:
            raise RuntimeError(f"{who} calibrates on training data: pass `train_dataloaders` or a datamodule to `fit`.")
        to_inputs = self.forward_inputs_fn(pl_module)
        for i, batch in enumerate(loader):
            if i >= batches:
                return
            yield to_inputs(batch)

    def check_forward(self, trainer: pl.Trainer, pl_module: nn.Module, who: str) -> Any:
        """Run the compressed module once on two samples of the first training batch, before the first step.

        Returns:
            Those two samples' forward arguments (on the module's device), e.g. for tracing.

        Raises:
            TypeError: naming ``forward_inputs`` and ``lc_forward_inputs``, when the forward fails on them.
        """
        module = self.target_module(pl_module)
        device = next(module.parameters()).device
        inputs = self.training_inputs(trainer, pl_module, 1, who)  # no loader: its own RuntimeError
        was_training = module.training
        try:
            example = to_device(leading(next(inputs), 2), device)
            module.eval()
            with torch.no_grad():
                call_forward(module, example)
        except Exception as err:
            raise TypeError(self._forward_help(who, err)) from err
        finally:
            module.train(was_training)
        return example

    @staticmethod
    def _forward_help(who: str, err: BaseException) -> str:
        return (
            f"{who} runs the model on training batches to calibrate, and the forward failed on the first batch "
            f"({type(err).__name__}: {err}). By default it calls `model(batch[0])`. Pass `forward_inputs=` to the "
            "callback, or define `lc_forward_inputs(self, batch)` on your LightningModule: a function from a batch "
            "to the forward's arguments (a tensor, a tuple of positional arguments or a dict of keyword arguments)."
        )

    @staticmethod
    def named_tensors(module: nn.Module, names: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """Parameters of ``module`` by name, in the order given."""
        params = dict(module.named_parameters())
        for name in names:
            if name not in params:
                raise KeyError(f"The model has no parameter {name!r} (was it restructured after compression?).")
            yield name, params[name]
