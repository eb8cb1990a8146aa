"""The optimizers rebuilt after a mid-fit shrink carry on as in an uninterrupted fit: LR, schedule, moments, frozen."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

import lightning_compress as lc
from tests.helpers.models import loaders, mlp, trainer_kwargs

_EPOCHS = 4


class Scheduled(pl.LightningModule):
    """A user's module with SGD (momentum) or Adam and one LR scheduler."""

    def __init__(self, make_scheduler: Callable[[torch.optim.Optimizer], Any], interval: str, adam: bool) -> None:
        super().__init__()
        self.body = mlp()
        self.make_scheduler, self.interval, self.adam = make_scheduler, interval, adam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", nn.functional.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=0.01) if self.adam else torch.optim.SGD(params, lr=0.05, momentum=0.9)
        config = {"scheduler": self.make_scheduler(opt), "interval": self.interval, "monitor": "val_loss"}
        return {"optimizer": opt, "lr_scheduler": config}


class RecordLR(pl.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


STEPS = _EPOCHS * 8  # 256 samples, batch 32
SCHEDULERS: dict[str, tuple[Callable[[torch.optim.Optimizer], Any], str]] = {
    "cosine-step": (lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=STEPS), "step"),
    "step-epoch": (lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5), "epoch"),
    "exponential-step": (lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.95), "step"),
    "lambda-epoch": (lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda e: 1.0 / (1 + e)), "epoch"),
    "onecycle-step": (lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=STEPS), "step"),
    "plateau-epoch": (lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=0), "epoch"),
}


def _lrs(name: str, callbacks: list[pl.Callback], tmp_path: Path, adam: bool = False) -> tuple[list[float], Scheduled]:
    torch.manual_seed(0)
    make, interval = SCHEDULERS[name]
    model = Scheduled(make, interval, adam)
    record = RecordLR()
    train, val = loaders()
    trainer = pl.Trainer(callbacks=[*callbacks, record], **trainer_kwargs(tmp_path, max_epochs=_EPOCHS))
    trainer.fit(model, train, val)
    return record.lrs, model


def _shrinking() -> lc.NeuronElimination:
    """Eliminates over the first 30% of the fit and shrinks there: the optimizers are rebuilt mid-fit."""
    return lc.NeuronElimination(target_params=0.6, rounds=2, min_rows_per_neuron=4, end=0.3, verbose=False)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_lr_sequence_after_a_mid_fit_shrink_equals_the_dense_fit(name: str, tmp_path: Path) -> None:
    dense, _ = _lrs(name, [], tmp_path)
    shrunk, model = _lrs(name, [_shrinking()], tmp_path)
    assert sum(p.numel() for p in model.body.parameters()) < 0.8 * sum(p.numel() for p in mlp().parameters())
    if name != "plateau-epoch":  # the plateau's decisions follow the (different) validation loss
        assert shrunk == pytest.approx(dense, rel=1e-12)
    else:
        assert len(shrunk) == len(dense)
        assert shrunk[0] == dense[0]


def test_adam_moments_are_sliced_not_restarted(tmp_path: Path) -> None:
    _, model = _lrs("cosine-step", [_shrinking()], tmp_path, adam=True)
    optimizer = model.trainer.optimizers[0]
    for param in model.body.parameters():
        state = optimizer.state[param]
        assert state["exp_avg"].shape == param.shape
        assert int(state["step"]) == STEPS  # one count from the first step: the moments were carried


def test_a_frozen_layer_stays_frozen_and_untouched_across_the_shrink(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Scheduled(*SCHEDULERS["cosine-step"], adam=False)
    model.body[4].requires_grad_(False)  # the head: pair 2 -> 4 is left alone, pair 0 -> 2 shrinks mid-fit
    head = model.body[4].weight.detach().clone()
    train, val = loaders()
    elimination = lc.NeuronElimination(target_params=0.6, rounds=2, min_rows_per_neuron=4, end=0.3, verbose=False)
    pl.Trainer(callbacks=[elimination], **trainer_kwargs(tmp_path, max_epochs=_EPOCHS)).fit(model, train, val)
    assert [p.producer for p in elimination.pairs] == ["body.0"]
    assert model.body[0].out_features < 32  # shrunk, and its new Parameters still train
    assert model.body[0].weight.requires_grad
    assert model.body[2].weight.requires_grad
    assert not model.body[4].weight.requires_grad
    assert torch.equal(model.body[4].weight, head)
