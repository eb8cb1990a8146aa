"""Calibration: training inputs read between steps, the forward check before the first step, BatchNorm statistics.

The statistics are re-estimated after a method replaced weights.

How a batch becomes the forward's arguments: the callback's ``forward_inputs``, else the LightningModule's
``lc_forward_inputs(batch)``, else the batch's first element. Every batch a callback reads (training or validation)
comes from an iterator of its own over the fit's data (:func:`own_loader`) and goes through what the fit's steps
apply to it: the precision plugin's input conversion and the LightningModule's batch transfer hooks
(:func:`as_the_fit_sees`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from lightning_compress.callbacks.randomness import kept_random_state, loader_generators
from lightning_compress.functional.batchnorm import batch_norms, recalibrate_batch_norms_
from lightning_compress.functional.forward import (
    ForwardInputs,
    call_forward,
    default_forward_inputs,
    leading,
    to_device,
)

__all__ = [
    "EVENT_NORM_BATCHES",
    "FORWARD_INPUTS_ATTR",
    "NORM_CALIBRATION_BATCHES",
    "as_the_fit_sees",
    "check_forward",
    "event_norm_inputs",
    "has_validation",
    "own_loader",
    "read_batches",
    "recalibrate_norms",
    "resolve_forward_inputs",
    "training_inputs",
]

#: Method a LightningModule may define, ``lc_forward_inputs(batch)``: the forward's arguments for a training batch.
FORWARD_INPUTS_ATTR = "lc_forward_inputs"
#: Training batches the BatchNorm statistics are re-estimated on after a method replaced weights at the end of fit.
NORM_CALIBRATION_BATCHES = 20
#: Training batches a guarded event re-estimates the BatchNorm statistics on, for the model before it and for each of
#: its trials: the same batches every time, so the paired comparison sees the weights' change and not two draws of
#: batches, and few, because a back-off may try several candidates.
EVENT_NORM_BATCHES = 8


def resolve_forward_inputs(forward_inputs: ForwardInputs | None, pl_module: nn.Module) -> ForwardInputs:
    """How a batch becomes the forward's arguments.

    ``forward_inputs``, else the LightningModule's ``lc_forward_inputs(batch)``, else the batch's first element.

    Examples:
        >>> resolve_forward_inputs(None, torch.nn.Linear(2, 2))((torch.ones(1, 2), 0)).shape
        torch.Size([1, 2])
    """
    if forward_inputs is not None:
        return forward_inputs
    hook = getattr(pl_module, FORWARD_INPUTS_ATTR, None)
    return hook if callable(hook) else default_forward_inputs


def own_loader(loader: Any) -> Any:
    """The same data as ``loader``, read through an iterator of its own (never the one the fit is reading).

    ``iter()`` on a DataLoader with ``persistent_workers=True`` resets the workers' iterator, the one the fit loop
    is reading mid-epoch. A DataLoader over the same dataset, batch sampler, collate function and workers (not
    persistent: nothing is left running) reads the same batches and leaves the fit's alone; it draws its seeds as
    the loader itself would, so the batches are those an ``iter()`` of it would give. Other iterables are returned
    as they are.

    Examples:
        >>> loader = DataLoader(list(range(6)), batch_size=4)
        >>> [b.tolist() for b in own_loader(loader)], own_loader(loader) is loader
        ([[0, 1, 2, 3], [4, 5]], False)
    """
    if not isinstance(loader, DataLoader):
        return loader
    common: dict[str, Any] = {
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "generator": loader.generator,
    }
    if isinstance(loader.dataset, IterableDataset):
        return DataLoader(loader.dataset, batch_size=loader.batch_size, drop_last=loader.drop_last, **common)
    if loader.batch_sampler is None:  # no automatic batching: the sampler gives whole batches
        return DataLoader(loader.dataset, batch_size=None, sampler=loader.sampler, **common)
    return DataLoader(loader.dataset, batch_sampler=loader.batch_sampler, **common)


def read_batches(loader: Any) -> Iterator[Any]:
    """``loader``'s batches through an iterator of its own (:func:`own_loader`), moving no random state of the fit.

    The shuffle's seed, the workers' base seed and any generator the loader or its sampler holds are drawn as an
    ``iter()`` would draw them, then put back (:func:`~.randomness.kept_random_state`): the fit's next epoch is
    shuffled as it would be without this read.

    Examples:
        >>> loader = DataLoader(list(range(6)), batch_size=4, shuffle=True)
        >>> _ = torch.manual_seed(0)
        >>> next_draw = torch.rand(1)
        >>> _ = torch.manual_seed(0)
        >>> sorted(int(i) for b in read_batches(loader) for i in b)
        [0, 1, 2, 3, 4, 5]
        >>> torch.equal(torch.rand(1), next_draw)  # the read moved no random state
        True
    """
    own = own_loader(loader)
    generators = loader_generators(own)
    with kept_random_state(generators):
        iterator = iter(own)
    while True:
        with kept_random_state(generators):
            batch = next(iterator, _END)
        if batch is _END:
            return
        yield batch


#: The end of :func:`read_batches`' iterator.
_END = object()


def as_the_fit_sees(trainer: pl.Trainer, batch: Any) -> Any:
    """``batch`` as the fit's steps receive it: the precision plugin's conversion, then the transfer hooks.

    The same calls, in the same order, as Lightning's training and evaluation loops (``convert_input``,
    ``on_before_batch_transfer``, ``transfer_batch_to_device``, ``on_after_batch_transfer``).
    """
    plugin = getattr(trainer, "precision_plugin", None)  # a stand-in trainer (tests, tools) may have neither
    batch = plugin.convert_input(batch) if plugin is not None else batch
    module = getattr(trainer, "lightning_module", None)
    if module is None:
        return batch
    batch = module._on_before_batch_transfer(batch, dataloader_idx=0)
    return trainer.strategy.batch_to_device(batch, dataloader_idx=0)


def training_inputs(
    trainer: pl.Trainer, to_inputs: ForwardInputs, batches: int, who: str, shard: bool = False
) -> Iterator[Any]:
    """The forward's arguments for the first ``batches`` training batches, for calibration.

    With ``shard`` under several processes, each rank reads its own share of them (batch ``i`` goes to rank
    ``i % world_size``), for statistics the caller sums over ranks; without it every rank reads the same ones.

    Raises:
        RuntimeError: the fit has no training data loader (``who`` names the caller).
    """
    source = getattr(trainer.fit_loop, "_data_source", None)
    loader = source.dataloader() if source is not None else None
    if loader is None:
        raise RuntimeError(f"{who} calibrates on training data: pass `train_dataloaders` or a datamodule to `fit`.")
    world, rank = (trainer.world_size, trainer.global_rank) if shard else (1, 0)
    for i, batch in enumerate(read_batches(loader)):
        if i >= batches:
            return
        if i % world == rank:
            yield to_inputs(as_the_fit_sees(trainer, batch))


def event_norm_inputs(trainer: pl.Trainer, module: nn.Module, to_inputs: ForwardInputs, who: str) -> list[Any]:
    """The forward arguments one guarded event re-estimates BatchNorm statistics on (on the module's device).

    Empty for a module without BatchNorm: nothing is read.
    """
    if not batch_norms(module):
        return []
    device = next(module.parameters()).device
    return [to_device(x, device) for x in training_inputs(trainer, to_inputs, EVENT_NORM_BATCHES, who)]


def check_forward(trainer: pl.Trainer, module: nn.Module, to_inputs: ForwardInputs, who: str) -> Any:
    """Run ``module`` once on two samples of the first training batch, before the first step.

    Returns:
        Those two samples' forward arguments (on the module's device), e.g. for tracing.

    Raises:
        TypeError: naming ``forward_inputs`` and ``lc_forward_inputs``, when the forward fails on them.
    """
    device = next(module.parameters()).device
    inputs = training_inputs(trainer, to_inputs, 1, who)  # no loader: its own RuntimeError
    was_training = module.training
    try:
        example = to_device(leading(next(inputs), 2), device)
        module.eval()
        with torch.no_grad():
            call_forward(module, example)
    except Exception as err:
        raise TypeError(_forward_help(who, err)) from err
    finally:
        module.train(was_training)
    return example


def _forward_help(who: str, err: BaseException) -> str:
    return (
        f"{who} runs the model on training batches to calibrate, and the forward failed on the first batch "
        f"({type(err).__name__}: {err}). By default it calls `model(batch[0])`. Pass `forward_inputs=` to the "
        "callback, or define `lc_forward_inputs(self, batch)` on your LightningModule: a function from a batch "
        "to the forward's arguments (a tensor, a tuple of positional arguments or a dict of keyword arguments)."
    )


def recalibrate_norms(trainer: pl.Trainer, module: nn.Module, to_inputs: ForwardInputs, who: str) -> int:
    """Re-estimate the BatchNorm statistics of ``module`` on training batches; the batches read (0: no BatchNorm).

    Under several processes every rank reads its own batches and rank 0's statistics go everywhere.
    """
    if not batch_norms(module):
        return 0
    inputs = training_inputs(trainer, to_inputs, NORM_CALIBRATION_BATCHES, who)
    read = recalibrate_batch_norms_(module, inputs)
    buffers = [b for m in batch_norms(module) for b in (m.running_mean, m.running_var) if b is not None]
    if trainer.world_size > 1:
        for buffer in buffers:
            buffer.copy_(trainer.strategy.broadcast(buffer, src=0))
    return read


def has_validation(trainer: pl.Trainer, pl_module: nn.Module, needs_step: bool = True) -> bool:
    """Whether ``fit`` will run a validation loop (with ``validation_step`` unless ``needs_step`` is False)."""
    from lightning.pytorch.utilities.model_helpers import is_overridden

    source = getattr(trainer.fit_loop.epoch_loop.val_loop, "_data_source", None)
    defined = source is not None and source.is_defined()
    step = is_overridden("validation_step", pl_module) or not needs_step
    return bool(defined and step and trainer.limit_val_batches != 0)
