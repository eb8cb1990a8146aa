"""Distillation from the model before compression: a temperature-scaled KL term to a frozen teacher's outputs.

The teacher is the model as it was right before the fit's first compression event (a frozen copy), or one the user
passes. The term is added to the loss Lightning is about to backpropagate (``on_before_backward``), so it works with
any LightningModule, automatic or manual optimization, without a change to its ``training_step``.
"""

from __future__ import annotations

import copy
import importlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_compress.arguments import check_number
from lightning_compress.callbacks.plan import FitPlan, compression_callbacks, should_skip
from lightning_compress.representation import REPRESENTATION_ATTR
from lightning_compress.saving import artifact_module, load
from lightning_compress.surgery import resize_to_state

__all__ = ["Distillation"]

#: A module's hook registries: emptied while the teacher is copied, so that no callback's hook (and through its bound
#: method, no callback or trainer) is copied with it.
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` in eval mode with gradients off, without the hooks and compression records on it.

    Examples:
        >>> net = nn.Linear(3, 2)
        >>> handle = net.register_forward_hook(lambda *a: None)
        >>> teacher = frozen_copy(net)
        >>> len(teacher._forward_hooks), len(net._forward_hooks), teacher.training, teacher.weight.requires_grad
        (0, 1, False, False)
    """
    stashed: list[tuple[nn.Module, dict[str, Any]]] = []
    for sub in module.modules():
        saved = {name: getattr(sub, name) for name in _HOOK_DICTS if hasattr(sub, name)}
        for name in saved:
            object.__setattr__(sub, name, OrderedDict())
        stashed.append((sub, saved))
    try:
        teacher = copy.deepcopy(module)
    finally:
        for sub, saved in stashed:
            for name, value in saved.items():
                object.__setattr__(sub, name, value)
    for sub in teacher.modules():
        if REPRESENTATION_ATTR in sub.__dict__:  # the teacher is not an artifact: no method's decisions on it
            object.__delattr__(sub, REPRESENTATION_ATTR)
    return teacher.eval().requires_grad_(False)


class Distillation(Callback):
    """Distil the network being compressed from itself before compression (Hinton et al. 2015).

    At the step of the fit's first compression event (the earliest window of the compression callbacks in the
    Trainer, see :func:`~lightning_compress.plan`) a frozen copy of the model is taken as the teacher; from then on
    every training step adds ``weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))`` (batch mean) to the
    loss, with the teacher run on the same inputs. In a small compressed network the accuracy lost is capacity; the
    teacher's soft outputs carry more per sample than the labels.

    Put it before the compression callbacks in ``callbacks=[...]`` (the CLI does), so that the teacher is taken
    before an event of the same step. The model is the stored module (``lc_artifact_module`` of a LightningModule, its
    backbone); its output must be logits (a tensor whose last dimension is the classes).

    Args:
        temperature: ``T``, which softens both distributions (the KL is scaled by ``T^2`` so that its gradients keep
            their size as ``T`` changes).
        weight: the KL term's weight against the module's own loss.
        teacher: a trained model to distil from instead (frozen, used from the first step), or the path of its
            artifact (a zoo model's ``.lcz``, e.g. the dense run's); it gets the same inputs.
        start: the fraction of the fit at which the teacher is taken (default: the first compression window's start).
            A fit that trains from scratch and compresses from its first step needs it (the model before
            compression would be the untrained one): e.g. ``start=0.2`` takes the model after a fifth of the fit.

    Raises:
        ValueError: naming the argument, for a temperature or weight that is not positive, a ``teacher`` that is not
            a module, a ``start`` outside [0, 1]; at ``setup``, a fit with no compression callback and neither
            ``teacher`` nor ``start``.

    Examples:
        >>> import lightning_compress as lc
        >>> callbacks = [lc.Distillation(temperature=4.0), lc.SuccessivePruning(target_sparsity=0.9)]
        >>> callbacks[0].temperature, callbacks[0].weight
        (4.0, 1.0)
    """

    def __init__(
        self,
        temperature: float = 4.0,
        weight: float = 1.0,
        teacher: nn.Module | str | os.PathLike[str] | None = None,
        start: float | None = None,
    ) -> None:
        check_number("temperature", temperature, low=0, low_open=True)
        check_number("weight", weight, low=0, low_open=True)
        check_number("start", start, low=0, high=1, allow_none=True)
        if isinstance(teacher, str | os.PathLike):
            if not Path(teacher).is_file():
                raise ValueError(f"`teacher`: no artifact file {str(teacher)!r} (pass a module or a .lcz path).")
            importlib.import_module("lightning_compress.models")  # a zoo artifact names its architecture
            teacher = load(teacher)
        if teacher is not None and not isinstance(teacher, nn.Module):
            kind = type(teacher).__name__
            raise ValueError(f"`teacher` must be None, a torch.nn.Module or an artifact path, got {kind}.")
        self.temperature = float(temperature)
        self.weight = float(weight)
        self.start = start
        self.teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
        self.taken_at: int | None = 0 if teacher is not None else None
        self._given = teacher is not None
        self._take_at = 0
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._handle: RemovableHandle | None = None
        self._restored: dict[str, torch.Tensor] | None = None
        self._kl_sum, self._kl_count = 0.0, 0
        self._warned = False

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self._given or self.start is not None:
            return
        if not compression_callbacks(trainer):
            raise ValueError(
                "Distillation takes its teacher before the fit's first compression event, and this Trainer has no "
                "compression callback: pass `teacher=` (a trained model) or `start=` (the fraction of the fit at "
                "which the teacher is taken)."
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if should_skip(trainer):
            return
        module = artifact_module(pl_module)
        total = int(trainer.estimated_stepping_batches)
        if self.start is not None:
            self._take_at = round(self.start * total)
        elif not self._given:
            fit = FitPlan.of(compression_callbacks(trainer), total_steps=total, trainer=trainer)
            self._take_at = min(fit.steps_of(cb)[0] for cb in fit.order)
        if self._restored is not None:  # resumed: the teacher the checkpoint holds, at its own shapes
            teacher = frozen_copy(module)
            resize_to_state(teacher, self._restored)
            teacher.load_state_dict(self._restored)
            self.teacher, self._restored = teacher, None
        elif self.teacher is None and trainer.global_step >= self._take_at:
            self._take(module, trainer)
        if self.teacher is not None:
            self.teacher.to(next((p.device for p in module.parameters()), torch.device("cpu")))
        self._handle = module.register_forward_hook(self._capture, with_kwargs=True)

    def _take(self, module: nn.Module, trainer: pl.Trainer) -> None:
        self.teacher = frozen_copy(module)
        self.taken_at = trainer.global_step
        rank_zero_info(
            f"Distillation: the teacher is the model at step {trainer.global_step} (T={self.temperature:g}, "
            f"weight {self.weight:g})."
        )

    def _capture(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        """The student's logits of a training forward, and the teacher's on the same inputs."""
        if self.teacher is None or not module.training or not torch.is_grad_enabled():
            return
        if not isinstance(output, torch.Tensor) or not output.is_floating_point() or output.dim() < 1:
            if not self._warned:
                rank_zero_warn("Distillation: the model's output is not a tensor of logits; no distillation term.")
                self._warned = True
            return
        with torch.no_grad():
            target = self.teacher(*args, **kwargs)
        if isinstance(target, torch.Tensor) and target.shape == output.shape:
            self._pending = (output, target)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self._pending = None

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if self._pending is None:
            return
        student, target = self._pending
        self._pending = None
        t = self.temperature
        classes = student.shape[-1]
        kl = F.kl_div(
            F.log_softmax(student.reshape(-1, classes).float() / t, dim=-1),
            F.log_softmax(target.reshape(-1, classes).float() / t, dim=-1),
            log_target=True,
            reduction="batchmean",
        ) * (t * t)
        # the loss Lightning backpropagates next: the term joins its graph in place (a hook cannot return a new one)
        loss.add_(self.weight * kl.to(loss.dtype) / max(int(trainer.accumulate_grad_batches), 1))
        self._kl_sum += float(kl.detach())
        self._kl_count += 1

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        # after step take_at - 1: before any event of step take_at, at that batch's start or end
        if self.teacher is None and self._handle is not None and trainer.global_step >= self._take_at:
            self._take(artifact_module(pl_module), trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._kl_count:
            pl_module.log("distill/kl", self._kl_sum / self._kl_count)
            self._kl_sum, self._kl_count = 0.0, 0

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._pending = None
        if not self._given:
            self.teacher = None  # a model's worth of memory, no longer needed

    @override
    def state_dict(self) -> dict[str, Any]:
        if self.teacher is None or self._given:
            return {"taken_at": self.taken_at}
        weights = {k: v.detach().cpu() for k, v in self.teacher.state_dict().items()}
        return {"taken_at": self.taken_at, "teacher": weights}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.taken_at = state_dict.get("taken_at")
        if "teacher" in state_dict and not self._given:
            self._restored = dict(state_dict["teacher"])
