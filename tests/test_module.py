from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_compress import ImageClassifier
from lightning_compress.module import evaluate_accuracy


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
    trainer = pl.Trainer(
        max_epochs=15,
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
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
