"""A callback moves none of the fit's random streams: the fit with it sees the batches the dense fit sees (#35)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn

import lightning_compress as lc
from lightning_compress.callbacks.calibration import read_batches
from lightning_compress.callbacks.randomness import kept_random_state
from tests.helpers.models import blobs, loaders, trainer_kwargs


class BatchesSeen(pl.Callback):
    """Records the first input row of every training batch and one draw of the global generator after each step."""

    def __init__(self) -> None:
        self.rows: list[torch.Tensor] = []
        self.draws: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, i: int) -> None:
        x, _ = batch  # type: ignore[misc]
        self.rows.append(x[0].clone())

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        state = torch.get_rng_state()
        self.draws.append(float(torch.rand(1)))
        torch.set_rng_state(state)


def _fit(tmp_path: Path, callback: pl.Callback | None) -> BatchesSeen:
    torch.manual_seed(0)
    # dropout: the BatchNorm re-estimation and the guards run the model in training mode (dropout draws)
    layers = [nn.Linear(16, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 64), nn.ReLU()]
    net = nn.Sequential(*layers, nn.Linear(64, 4))
    model = lc.ImageClassifier(net, num_classes=4)
    seen = BatchesSeen()
    callbacks = [seen] if callback is None else [callback, seen]
    train, val = loaders()
    pl.Trainer(callbacks=callbacks, **trainer_kwargs(tmp_path, max_epochs=3)).fit(model, train, val)
    return seen


DEFAULTS: dict[str, Callable[[], pl.Callback]] = {
    "NeuronElimination": lambda: lc.NeuronElimination(verbose=False),
    "SuccessivePruning": lc.SuccessivePruning,
    "Ternarization": lc.Ternarization,
    "WeightSharing": lambda: lc.WeightSharing(progress=False, pop_size=4, n_gen=2),
}


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_a_default_callback_leaves_the_fits_batches_and_random_draws_as_they_were(tmp_path: Path, name: str) -> None:
    dense = _fit(tmp_path / "dense", None)
    callback = DEFAULTS[name]()
    compressed = _fit(tmp_path / name, callback)
    assert sum(callback.event_counts.values()) > 0  # its events ran (and read batches, in training mode too)
    assert len(compressed.rows) == len(dense.rows) == 24
    assert all(torch.equal(a, b) for a, b in zip(compressed.rows, dense.rows, strict=True))
    assert compressed.draws == dense.draws


def test_read_batches_moves_no_generator_a_loader_holds() -> None:
    generator = torch.Generator().manual_seed(3)
    loader = torch.utils.data.DataLoader(blobs(64), batch_size=16, shuffle=True, generator=generator)
    before = generator.get_state()
    assert sum(len(x) for x, _ in read_batches(loader)) == 64
    assert torch.equal(generator.get_state(), before)


def test_kept_random_state_puts_back_numpy_and_python_too() -> None:
    np.random.seed(1)
    random.seed(1)
    expected = (np.random.rand(), random.random())
    np.random.seed(1)
    random.seed(1)
    with kept_random_state():
        np.random.rand(5), random.random()
    assert (np.random.rand(), random.random()) == expected
