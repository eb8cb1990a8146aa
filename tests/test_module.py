from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_compress import ImageClassifier
from lightning_compress.module import evaluate_accuracy, param_groups
from lightning_compress.schedules import hold_then_cosine
from tests.helpers.models import trainer_kwargs


def loader(n: int = 64) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()  # 6 classes, 4 used
    return DataLoader(TensorDataset(x, y), batch_size=16)


def test_fit_logs_metrics_and_learns(tmp_path: Path) -> None:
    model = ImageClassifier(
        torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 6)),
        num_classes=6,
        optimizer=partial(torch.optim.Adam, lr=0.02),
        scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.9),
        top_k=(1, 5),
    )
    before = evaluate_accuracy(model, loader())
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=15))
    trainer.fit(model, loader(), loader())
    metrics = dict(trainer.callback_metrics)
    trainer.test(model, loader(), verbose=False)
    metrics.update(trainer.callback_metrics)
    for key in ("train/loss_epoch", "val/acc", "val/acc_top5", "test/acc", "test/acc_top5", "test/loss"):
        assert key in metrics, key
    assert float(metrics["test/acc"]) > max(before, 0.8)
    assert float(metrics["test/acc_top5"]) >= float(metrics["test/acc"])
    assert float(metrics["test/acc"]) == pytest.approx(evaluate_accuracy(model, loader()))
    model.train()
    evaluate_accuracy(model, loader())
    assert model.training  # the caller's mode is restored


def test_invalid_arguments() -> None:
    backbone = torch.nn.Linear(2, 3)
    with pytest.raises(ValueError, match="`num_classes`"):
        ImageClassifier(backbone, num_classes=1)
    with pytest.raises(ValueError, match="`scheduler_interval`"):
        ImageClassifier(backbone, num_classes=3, scheduler_interval="batch")
    with pytest.raises(ValueError, match="`top_k`"):
        ImageClassifier(backbone, num_classes=3, top_k=(1, 5))
    with pytest.raises(ValueError, match="no samples"):
        evaluate_accuracy(backbone, [])


class LearningRates(pl.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_hold_then_cosine_gets_the_fit_length(tmp_path: Path, interval: str) -> None:
    """A factory with ``total_steps`` is given the fit's length: it holds the LR, then decays it towards 0."""
    model = ImageClassifier(
        torch.nn.Linear(8, 6),
        num_classes=6,
        optimizer=partial(torch.optim.SGD, lr=0.1),
        scheduler=partial(hold_then_cosine, hold_fraction=0.5),
        scheduler_interval=interval,
    )
    lrs = LearningRates()
    trainer = pl.Trainer(callbacks=[lrs], **trainer_kwargs(tmp_path, max_epochs=4))
    trainer.fit(model, loader(), loader())
    assert len(lrs.lrs) == 16  # 4 epochs x 4 batches
    assert lrs.lrs[:8] == [pytest.approx(0.1)] * 8  # held for the first half of the fit
    assert all(a >= b for a, b in zip(lrs.lrs, lrs.lrs[1:], strict=False))
    assert lrs.lrs[-1] < (0.01 if interval == "step" else 0.06)  # near the end of a half cosine


def test_hold_then_cosine_invalid_arguments() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    for kwargs, name in (
        ({"total_steps": 0}, "total_steps"),
        ({"total_steps": 5, "hold_fraction": 1.5}, "hold_fraction"),
        ({"total_steps": 5, "final_factor": -0.1}, "final_factor"),
    ):
        with pytest.raises(ValueError, match=f"`{name}`"):
            hold_then_cosine(opt, **kwargs)  # type: ignore[arg-type]


def test_param_groups_split_by_lr_scale_and_skip_frozen_parameters() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    net[1].lc_lr_scale = 0.5
    net[2].weight.requires_grad_(False)
    groups = param_groups(net, lr=0.2)
    assert [g["lr_scale"] for g in groups] == [1.0, 0.5]
    assert [g["lr"] for g in groups] == [pytest.approx(0.2), pytest.approx(0.1)]
    assert [len(g["params"]) for g in groups] == [3, 2]  # net[2].weight is frozen, its bias is not
    net[1].lc_lr_scale = -1.0
    with pytest.raises(ValueError, match=r"'1'.*lc_lr_scale"):
        param_groups(net)


def test_classifier_scales_each_group_before_the_scheduler_sees_it(tmp_path: Path) -> None:
    backbone = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 6))
    backbone[0].lc_lr_scale = 0.1
    model = ImageClassifier(
        backbone,
        num_classes=6,
        optimizer=partial(torch.optim.SGD, lr=0.1),
        scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
    )
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=2))
    trainer.fit(model, loader(), loader())
    lrs = [g["lr"] for g in trainer.optimizers[0].param_groups]
    assert lrs == [pytest.approx(0.1 * 0.25), pytest.approx(0.01 * 0.25)]  # both halved twice from their own start
