"""Optimizer surgery: the optimizers rebuilt after parameters change shape, as if the fit had not been interrupted.

A structural method (NeuronElimination) replaces parameters by smaller ones in the middle of a fit. The optimizers
then refer to tensors that are gone, so they are built again from the user's ``configure_optimizers``; what an
uninterrupted fit would carry on with is put back by parameter name:

* every param group's hyperparameters (``lr``, ``initial_lr``, ``momentum``, ``betas``, ...), after the LR schedulers'
  own state is loaded: a freshly built scheduler starts from the initial LR, and loading its ``state_dict`` does not
  set the optimizer's ``lr`` (Cosine, Step, Exponential, Lambda, OneCycle and Plateau all continue exactly);
* each parameter's optimizer state (momentum buffers, Adam's moments and step count), sliced to the kept entries;
* ``requires_grad`` (a frozen layer stays frozen after it shrinks);
* the strategy's wrapping (DDP re-wrapped for the new shapes) and the precision plugin's optimizer setup.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.optimizer import _optimizers_to_device
from torch import nn

__all__ = ["KeptIndices", "OptimizerSnapshot", "reshape_parameters"]

#: parameter name -> the (dimension, kept indices) pairs that turn its old shape into the new one
KeptIndices = Mapping[str, Sequence[tuple[int, torch.Tensor]]]


@dataclass
class _OptimizerState:
    groups: list[dict[str, Any]]
    state: dict[str, dict[str, Any]]


@dataclass
class OptimizerSnapshot:
    """What the optimizers hold, by parameter name, taken before the parameters change."""

    optimizers: list[_OptimizerState] = field(default_factory=list)
    shapes: dict[str, torch.Size] = field(default_factory=dict)
    requires_grad: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def take(cls, trainer: pl.Trainer, module: nn.Module) -> OptimizerSnapshot:
        """Snapshot ``trainer``'s optimizers; ``module`` names the parameters (the LightningModule)."""
        params = dict(module.named_parameters())
        names = {id(p): n for n, p in params.items()}
        snapshot = cls(
            shapes={n: p.shape for n, p in params.items()},
            requires_grad={n: p.requires_grad for n, p in params.items()},
        )
        for optimizer in trainer.optimizers:
            groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
            state = {
                names[id(p)]: dict(optimizer.state[p])
                for g in optimizer.param_groups
                for p in g["params"]
                if id(p) in names and p in optimizer.state
            }
            snapshot.optimizers.append(_OptimizerState(groups, state))
        return snapshot

    def restore_requires_grad(self, module: nn.Module) -> None:
        """Give every parameter that kept its name the ``requires_grad`` it had (new Parameters default to True)."""
        for name, param in module.named_parameters():
            if name in self.requires_grad and param.requires_grad != self.requires_grad[name]:
                param.requires_grad_(self.requires_grad[name])

    def restore(self, trainer: pl.Trainer, module: nn.Module, kept: KeptIndices) -> None:
        """Put hyperparameters and per-parameter state back into ``trainer``'s new optimizers, sliced by ``kept``."""
        names = {id(p): n for n, p in module.named_parameters()}
        for optimizer, old in zip(trainer.optimizers, self.optimizers, strict=False):
            if len(optimizer.param_groups) == len(old.groups):
                for group, hyper in zip(optimizer.param_groups, old.groups, strict=True):
                    group.update(hyper)
            for group in optimizer.param_groups:
                for param in group["params"]:
                    name = names.get(id(param))
                    if name is None or name not in old.state:
                        continue
                    state = _sliced(old.state[name], self.shapes[name], param, kept.get(name, ()))
                    if state is not None:
                        optimizer.state[param] = state


def _sliced(
    state: Mapping[str, Any], old_shape: torch.Size, param: torch.Tensor, kept: Sequence[tuple[int, torch.Tensor]]
) -> dict[str, Any] | None:
    """One parameter's optimizer state for its new shape (``None``: it cannot be carried, the state restarts)."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.shape == old_shape and old_shape != param.shape:
            for dim, index in kept:
                value = value.index_select(dim, index.to(value.device))
            if value.shape != param.shape:
                return None
        out[key] = value
    return out


def reshape_parameters(trainer: pl.Trainer, change: Callable[[], KeptIndices], prefix: str = "") -> None:
    """Run ``change`` (which replaces parameters and returns their kept indices), then rebuild the optimizers.

    Args:
        trainer: the fit under way.
        change: changes the parameters; returns ``{name: [(dim, kept indices), ...]}`` for those it sliced (names
            relative to the module it changed).
        prefix: that module's name inside the LightningModule (``""``: the LightningModule itself).
    """
    module = trainer.lightning_module
    snapshot = OptimizerSnapshot.take(trainer, module)
    kept = {f"{prefix}.{n}" if prefix else n: v for n, v in change().items()}
    snapshot.restore_requires_grad(module)
    strategy = trainer.strategy
    schedulers = [config.scheduler.state_dict() for config in strategy.lr_scheduler_configs]
    wrapped = strategy.model
    if wrapped is not None and wrapped is not strategy.lightning_module and hasattr(strategy, "configure_ddp"):
        strategy.model = strategy.lightning_module
        strategy.configure_ddp()
    strategy.setup_optimizers(trainer)
    if strategy.model is not None:
        strategy.setup_precision_plugin()
    _optimizers_to_device(strategy.optimizers, strategy.root_device)
    for config, state in zip(strategy.lr_scheduler_configs, schedulers, strict=False):
        config.scheduler.load_state_dict(state)
    snapshot.restore(trainer, module, kept)
