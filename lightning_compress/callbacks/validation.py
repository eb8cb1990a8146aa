"""Scoring a model on cached validation samples: the loader given to ``fit``, the cache, the classification error.

WeightSharing scores every candidate codebook here; the samples are cached once (on the model's device, up to a
byte bound), so two candidates are compared on the same samples. Every sample run through the model is counted,
so a search can say what it cost in passes over the validation set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_compress.callbacks.calibration import as_the_fit_sees, read_batches
from lightning_compress.functional.forward import ForwardInputs, call_forward, leading, to_device

__all__ = ["METRICS", "VAL_CACHE_BYTES", "ValidationScorer", "validation_loader"]

#: The metrics a scorer computes; its error is ``1 - metric``.
METRICS = ("accuracy", "f1_macro")
#: ``max_samples="auto"``: as many validation samples are cached as fit in this many bytes.
VAL_CACHE_BYTES = 1 << 30

Batches = list[tuple[Any, torch.Tensor]]


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def validation_loader(trainer: pl.Trainer) -> Any:
    """The first validation loader given to ``fit`` (also when Lightning skips its own validation loop)."""
    if trainer.limit_val_batches == 0:
        return None
    loaders = trainer.val_dataloaders
    if loaders is None:
        source = getattr(trainer.fit_loop.epoch_loop.val_loop, "_data_source", None)
        loaders = source.dataloader() if source is not None and source.is_defined() else None
    if isinstance(loaders, Sequence) and not isinstance(loaders, torch.utils.data.DataLoader):
        loaders = loaders[0] if loaders else None
    return loaders


class ValidationScorer:
    """A classifier's error on validation samples, cached or streamed, with every scored sample counted.

    Args:
        owner: the callback's name (in messages).
        metric: ``"accuracy"`` or ``"f1_macro"``.
        max_samples: the most samples cached: an int, ``None`` (all) or ``"auto"`` (:data:`VAL_CACHE_BYTES`).

    Attributes:
        scored_samples: samples run through the model since the last :meth:`reset`.
        cache_complete: whether the last cache holds the whole validation loader.

    Examples:
        >>> scorer = ValidationScorer("Demo", "accuracy", None)
        >>> scorer.error(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), 2)
        0.33333...
    """

    def __init__(self, owner: str, metric: str, max_samples: int | str | None) -> None:
        self.owner, self.metric, self.max_samples = owner, metric, max_samples
        self.scored_samples = 0
        self.cache_complete = True

    def reset(self) -> None:
        """Start counting again."""
        self.scored_samples = 0

    def batches(
        self, trainer: pl.Trainer, model: nn.Module, to_inputs: ForwardInputs, device: torch.device, probe: bool = False
    ) -> Batches:
        """The cached validation batches; with ``probe``, only the first, run through ``model`` as a check.

        Raises:
            RuntimeError: the validation data given to ``fit`` is gone.
            TypeError: the batches are not ``(inputs, targets)``, or the model's output is not logits.
        """
        loaders = validation_loader(trainer)
        if loaders is None:
            raise RuntimeError(f"{self.owner}: the validation data given to `fit` is gone.")
        batches: Batches = []
        seen = 0
        cap = self.max_samples if isinstance(self.max_samples, int) else None
        self.cache_complete = True
        for batch in map(partial(as_the_fit_sees, trainer), read_batches(loaders)):
            if cap is not None and seen >= cap:
                self.cache_complete = False
                break
            if not (
                isinstance(batch, Sequence) and len(batch) >= 2 and all(isinstance(t, torch.Tensor) for t in batch[:2])
            ):
                raise TypeError(
                    f"{self.owner} scores candidates by classification on validation batches of the form (inputs, "
                    f"targets); got a {type(batch).__name__}. Give `fit` such validation data."
                )
            x, y = to_device(to_inputs(batch), device), batch[1].to(device)
            if probe:
                self.probe(model, leading(x, 2), y[:2])
                return []
            if self.max_samples == "auto" and cap is None:  # the byte bound, from the first batch's size
                cap = max(1, VAL_CACHE_BYTES * len(y) // max(_tensor_bytes((x, y)), 1))
            if cap is not None and len(y) > cap - seen:
                x, y = leading(x, cap - seen), y[: cap - seen]
                self.cache_complete = False
            batches.append((x, y))
            seen += len(y)
        return batches

    @torch.no_grad()
    def error_on_all(self, trainer: pl.Trainer, model: nn.Module, to_inputs: ForwardInputs) -> tuple[float, int]:
        """Error on the whole validation loader, streamed batch by batch (nothing cached); and its sample count."""
        loaders = validation_loader(trainer)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        preds, targets, num_classes = [], [], 0
        try:
            for batch in map(partial(as_the_fit_sees, trainer), read_batches(loaders)):
                logits = call_forward(model, to_device(to_inputs(batch), device))
                num_classes = logits.shape[-1]
                preds.append(logits.reshape(-1, num_classes).argmax(dim=1).cpu())
                targets.append(batch[1].reshape(-1).cpu())
        finally:
            model.train(was_training)
        target = torch.cat(targets)
        self.scored_samples += len(target)
        return self.error(torch.cat(preds), target, num_classes), len(target)

    def error(self, preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> float:
        """``1 - metric`` of predicted classes against targets."""
        if self.metric == "accuracy":
            return 1.0 - float((preds == targets.to(preds.device)).float().mean())
        from torchmetrics.functional.classification import multiclass_f1_score

        score = multiclass_f1_score(preds, targets.to(preds.device), num_classes=num_classes, average="macro")
        return 1.0 - float(score)

    @torch.no_grad()
    def probe(self, model: nn.Module, x: Any, y: torch.Tensor) -> None:
        """Run ``model`` on two samples and check that it returns one row of logits per target.

        Raises:
            TypeError: naming ``forward_inputs`` / ``lc_forward_inputs`` when the forward fails, or the output's shape.
        """
        was_training = model.training
        model.eval()
        try:
            logits = call_forward(model, x)
        except Exception as err:
            raise TypeError(
                f"{self.owner} calls the model on validation batches (inputs, targets), and it failed "
                f"({type(err).__name__}: {err}). By default it calls `model(batch[0])`; pass `forward_inputs=` or "
                "define `lc_forward_inputs(self, batch)` on your LightningModule for several inputs."
            ) from err
        finally:
            model.train(was_training)
        if not (isinstance(logits, torch.Tensor) and logits.dim() >= 2 and logits.shape[:-1].numel() == y.numel()):
            raise TypeError(
                f"{self.owner} scores candidates by classification: the model must return logits of shape "
                f"(batch, classes), or (..., classes) with one target per row; got "
                f"{getattr(logits, 'shape', type(logits).__name__)} for targets of shape {tuple(y.shape)}."
            )

    def error_fn(self, model: nn.Module, batches: Batches) -> Callable[[], float]:
        """A function that scores ``model`` as it is when called, on ``batches`` (counted each call)."""
        targets = torch.cat([y.reshape(-1) for _, y in batches])

        def error() -> float:
            logits = torch.cat(self.outputs(model, batches))
            return self.error(logits.argmax(dim=1), targets, logits.shape[1])

        return error

    @staticmethod
    def leading_samples(batches: Batches, samples: int | None) -> Batches:
        """The first ``samples`` samples of ``batches``; none when ``samples`` is None or would not be fewer."""
        total = sum(len(y) for _, y in batches)
        if samples is None or total <= samples:
            return []
        taken, seen = [], 0
        for x, y in batches:
            take = min(len(y), samples - seen)
            taken.append((leading(x, take), y[:take]))
            seen += take
            if seen >= samples:
                break
        return taken

    @torch.no_grad()
    def outputs(self, model: nn.Module, batches: Batches) -> list[torch.Tensor]:
        """The model's class scores on ``batches``, one ``[rows, classes]`` tensor per batch (eval mode)."""
        self.scored_samples += sum(len(y) for _, y in batches)
        was_training = model.training
        model.eval()
        try:
            found = [call_forward(model, x) for x, _ in batches]
        finally:
            model.train(was_training)
        return [o.reshape(-1, o.shape[-1]) for o in found]
