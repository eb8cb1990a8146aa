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

from lightning_compress.codec.container import CODEC_PLAN_ATTR, CodecSpec, artifact_module

__all__ = ["CompressionCallback"]

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

    def __init__(self) -> None:
        self._summary: dict[str, float] = {}

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
    def training_inputs(trainer: pl.Trainer, batches: int, who: str) -> Iterator[torch.Tensor]:
        """The first ``batches`` training inputs (first element of each batch), for calibration.

        Raises:
            RuntimeError: the fit has no training data loader (``who`` names the caller).
        """
        source = getattr(trainer.fit_loop, "_data_source", None)
        loader = source.dataloader() if source is not None else None
        if loader is None:
            raise RuntimeError(f"{who} calibrates on training data: pass `train_dataloaders` or a datamodule to `fit`.")
        for i, batch in enumerate(loader):
            if i >= batches:
                return
            yield batch[0] if isinstance(batch, list | tuple) else batch

    @staticmethod
    def named_tensors(module: nn.Module, names: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """Parameters of ``module`` by name, in the order given."""
        params = dict(module.named_parameters())
        for name in names:
            if name not in params:
                raise KeyError(f"The model has no parameter {name!r} (was it restructured after compression?).")
            yield name, params[name]
