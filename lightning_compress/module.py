"""``ImageClassifier``: the LightningModule every recipe trains; wraps any ``nn.Module`` backbone."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

__all__ = ["LR_SCALE_ATTR", "ImageClassifier", "evaluate_accuracy", "is_lr_scale", "param_groups"]

OptimizerFactory = Callable[[Any], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]

#: A module carrying this attribute (a float) asks for its own parameters to train at that multiple of the
#: optimizer's learning rate (e.g. ``Ternarization(activation_lr_scale=...)`` sets it on its step activations).
LR_SCALE_ATTR = "lc_lr_scale"


def is_lr_scale(value: object) -> bool:
    """Whether ``value`` is a valid learning-rate multiple: a real number > 0 (a bool is not one)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0


def param_groups(model: nn.Module, lr: float | None = None) -> list[dict[str, Any]]:
    """The trainable parameters of ``model`` as optimizer param groups, one per learning-rate scale.

    A parameter's scale is the :data:`LR_SCALE_ATTR` attribute of the module that owns it (1.0 when absent). Each
    group carries its ``lr_scale``; with ``lr`` given it also carries ``lr = lr * lr_scale``, ready for any torch
    optimizer in a LightningModule's own ``configure_optimizers``. :class:`ImageClassifier` does this for you.

    Args:
        model: the module whose parameters are grouped.
        lr: the base learning rate, or ``None`` to leave ``lr`` to the optimizer (then apply ``lr_scale`` yourself,
            as :class:`ImageClassifier` does).

    Returns:
        Param groups, the unscaled one first; parameters with ``requires_grad=False`` are left out.

    Raises:
        ValueError: when a module's :data:`LR_SCALE_ATTR` is not a positive number.

    Examples:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        >>> net[1].lc_lr_scale = 0.1
        >>> groups = param_groups(net, lr=1e-2)
        >>> [(len(g["params"]), g["lr"]) for g in groups]
        [(2, 0.01), (2, 0.001)]
    """
    by_scale: dict[float, list[nn.Parameter]] = {}
    for name, module in model.named_modules():
        scale = getattr(module, LR_SCALE_ATTR, 1.0)
        if not is_lr_scale(scale):
            raise ValueError(f"module {name!r}: `{LR_SCALE_ATTR}` must be a number > 0, got {scale!r}.")
        trainable = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if trainable:
            by_scale.setdefault(float(scale), []).extend(trainable)
    scales = sorted(by_scale, key=lambda s: (s != 1.0, s))
    groups: list[dict[str, Any]] = [{"params": by_scale[s], "lr_scale": s} for s in scales]
    if lr is not None:
        for group in groups:
            group["lr"] = lr * group["lr_scale"]
    return groups


def _metrics(num_classes: int, top_k: Sequence[int], prefix: str) -> MetricCollection:
    return MetricCollection(
        {
            ("acc" if k == 1 else f"acc_top{k}"): MulticlassAccuracy(num_classes, top_k=k, average="micro")
            for k in top_k
        },
        prefix=prefix,
    )


class ImageClassifier(pl.LightningModule):
    """Cross-entropy classifier around a backbone, with torchmetrics accuracy.

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc`` (and
    ``*/acc_top5`` when ``5 in top_k``). The optimizer and LR scheduler are injected as factories, e.g. Hydra
    nodes with ``_partial_: true``.

    Args:
        backbone: the network; it is what :func:`lightning_compress.save` stores.
        num_classes: number of classes.
        optimizer: ``param groups -> Optimizer`` (default: Adam, lr 1e-3); it gets :func:`param_groups`, and each
            group's lr is then multiplied by its ``lr_scale``.
        scheduler: ``optimizer -> LRScheduler`` or ``None``; stepped every epoch (or step, see below). A factory
            with a ``total_steps`` parameter (e.g. :func:`lightning_compress.schedules.hold_then_cosine`) gets the
            fit's length in scheduler steps: optimizer steps or epochs, by ``scheduler_interval``.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        top_k: accuracies to report, e.g. ``(1, 5)`` for ImageNet.
        label_smoothing: passed to the cross-entropy.

    Examples:
        >>> import torch
        >>> from lightning_compress import ImageClassifier
        >>> clf = ImageClassifier(torch.nn.Linear(4, 3), num_classes=3)
        >>> clf(torch.zeros(2, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        top_k: Sequence[int] = (1,),
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"`num_classes` must be an int >= 2, got {num_classes!r}.")
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"`scheduler_interval` must be 'epoch' or 'step', got {scheduler_interval!r}.")
        top_k = tuple(int(k) for k in top_k)
        if not top_k or any(k < 1 or k > num_classes for k in top_k):
            raise ValueError(f"`top_k` entries must be in [1, num_classes={num_classes}], got {top_k!r}.")
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.backbone = backbone
        self.num_classes = num_classes
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.label_smoothing = label_smoothing
        self.train_metrics = _metrics(num_classes, top_k, "train/")
        self.val_metrics = _metrics(num_classes, top_k, "val/")
        self.test_metrics = _metrics(num_classes, top_k, "test/")

    @property
    def lc_artifact_module(self) -> nn.Module:
        """The module written to artifacts: the backbone (metrics and optimizer state are not part of the model)."""
        return self.backbone

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def _step(self, batch: Any, metrics: MetricCollection, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        metrics.update(logits, y)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=stage != "test", sync_dist=not on_step)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage == "val")
        return loss

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, self.train_metrics, "train")

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, self.val_metrics, "val")

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, self.test_metrics, "test")

    @override
    def configure_optimizers(self) -> Any:
        groups = param_groups(self)
        optimizer = self.optimizer_factory(groups) if self.optimizer_factory else torch.optim.Adam(groups, lr=1e-3)
        for group in optimizer.param_groups:  # before the scheduler records each group's initial lr
            group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self._build_scheduler(optimizer), "interval": self.scheduler_interval},
        }

    def _build_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        factory = cast(Callable[..., Any], self.scheduler_factory)  # not None: checked by the caller
        try:
            wants_total = "total_steps" in inspect.signature(factory).parameters
        except (TypeError, ValueError):  # builtins without a signature
            wants_total = False
        if not wants_total:
            return factory(optimizer)
        if self.scheduler_interval == "step":
            total = int(self.trainer.estimated_stepping_batches)
        else:
            total = int(self.trainer.max_epochs or 0)
            if total < 1:
                raise ValueError(
                    "the scheduler needs `total_steps`: set the Trainer's `max_epochs`, or use "
                    "`scheduler_interval='step'` (then the fit's optimizer steps are used)."
                )
        return factory(optimizer, total_steps=total)


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module, loader: Iterable[Any], device: str | torch.device = "cpu", max_batches: int | None = None
) -> float:
    """Top-1 accuracy of ``model`` over ``loader`` (or its first ``max_batches``), in eval mode.

    The model's own train/eval mode is restored afterwards.

    Examples:
        >>> import torch
        >>> model = torch.nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.eye(2)), model.bias.zero_()
        >>> evaluate_accuracy(model, [(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))])
        0.5
    """
    was_training = model.training
    model = model.to(device).eval()
    correct = total = 0
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        pred = model(x.to(device)).argmax(dim=1)
        correct += int((pred == y.to(device)).sum())
        total += y.numel()
    model.train(was_training)
    if total == 0:
        raise ValueError("`loader` yielded no samples.")
    return correct / total
