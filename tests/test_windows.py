"""One rule for windows: explicit windows keep the others' defaults around them, nothing runs past its end."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

import lightning_compress as lc
from lightning_compress.callbacks.base import CompressionCallback
from lightning_compress.callbacks.plan import FitPlan
from tests.helpers.models import blobs, loaders, mlp, trainer_kwargs


class _Resolved(Exception):
    pass


class _Resolve(pl.Callback):
    """Stops the fit once the windows are resolved (before the first step)."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        raise _Resolved


def _windows(callbacks: list[CompressionCallback], tmp_path: Path) -> list[tuple[float, float]]:
    model = lc.ImageClassifier(mlp(), num_classes=4)
    train, val = loaders()
    trainer = pl.Trainer(callbacks=[*callbacks, _Resolve()], **trainer_kwargs(tmp_path))
    with pytest.raises(_Resolved):
        trainer.fit(model, train, val)
    return [cb.window for cb in callbacks]


def test_an_explicit_window_leaves_the_others_defaults_around_it(tmp_path: Path) -> None:
    ne = lc.NeuronElimination(target_params=0.6, end=0.3, verbose=False)
    surp, ws = lc.SuccessivePruning(), lc.WeightSharing(progress=False)
    assert _windows([ne, surp, ws], tmp_path) == [(0.0, 0.3), (0.3, 1.0), (1.0, 1.0)]


def test_weight_sharing_end_alone_says_when_it_shares(tmp_path: Path) -> None:
    assert _windows([lc.WeightSharing(end=0.5, progress=False)], tmp_path) == [(0.5, 0.5)]


def test_stages_never_pass_the_window_end() -> None:
    surp = lc.SuccessivePruning(end=0.5)
    surp.fit_plan = FitPlan.of([surp], total_steps=10)  # a 5-step window for 14 stages
    steps = surp.steps_in_window(14, 0.2)
    assert max(steps) <= 5
    assert steps == sorted(steps)


class _Endless(IterableDataset):
    def __iter__(self):  # type: ignore[no-untyped-def]
        data = blobs(64)
        while True:
            yield from data


def test_an_unknown_fit_length_is_refused_before_the_first_step(tmp_path: Path) -> None:
    model = lc.ImageClassifier(mlp(), num_classes=4)
    kwargs = trainer_kwargs(tmp_path, max_epochs=-1, max_steps=-1, limit_val_batches=0)
    with pytest.raises(ValueError, match="max_steps"):
        pl.Trainer(callbacks=[lc.SuccessivePruning()], **kwargs).fit(model, DataLoader(_Endless(), batch_size=16))
    assert all(bool((p != 0).all()) for p in model.backbone.parameters() if p.dim() > 1)
    torch.manual_seed(0)


def test_the_plan_is_visible_before_training(tmp_path: Path) -> None:
    ne = lc.NeuronElimination(target_params=0.6, verbose=False)
    surp = lc.SuccessivePruning()
    trainer = pl.Trainer(callbacks=[surp, ne], **trainer_kwargs(tmp_path, max_steps=40))
    plan = lc.plan(trainer)
    rows = plan.rows()
    assert [r["callback"] for r in rows] == ["NeuronElimination", "SuccessivePruning"]  # aspect order
    assert [r["steps"] for r in rows] == ["0-20", "20-40"]
    assert "shrink at step 20" in rows[0]["events"]
    assert rows[0]["guard"].startswith("none")
    assert "own cost, all within 0.01" in rows[1]["guard"]
    assert plan.leader is surp  # the first compression callback given leads
    assert "NeuronElimination" in str(plan)
    assert plan.table().row_count == 2


def test_one_plan_is_shared_by_every_callback_of_a_fit(tmp_path: Path) -> None:
    ne = lc.NeuronElimination(target_params=0.6, end=0.3, verbose=False)
    surp, ws = lc.SuccessivePruning(), lc.WeightSharing(progress=False)
    _windows([ne, surp, ws], tmp_path)
    assert ne.fit_plan is not None
    assert ne.fit_plan is surp.fit_plan is ws.fit_plan
    assert ne.fit_plan.total_steps > 0


def test_a_composition_error_quotes_the_plan(tmp_path: Path) -> None:
    from lightning_compress.representation import CompositionError

    ne = lc.NeuronElimination(target_params=0.6, start=0.0, end=0.8, verbose=False)
    surp = lc.SuccessivePruning(target_sparsity=0.9, start=0.5, end=1.0)
    with pytest.raises(CompositionError, match=r"(?s)overlapping windows.*The fit plan:.*NeuronElimination.*0-0.8"):
        _windows([ne, surp], tmp_path)


def test_every_fit_logs_its_plan_when_training_starts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = lc.ImageClassifier(mlp(), num_classes=4)
    train, val = loaders()
    callback = lc.SuccessivePruning(target_sparsity=0.5)
    with caplog.at_level("INFO"):
        pl.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, max_epochs=1)).fit(model, train, val)
    assert "lightning_compress fit plan" in caplog.text
    assert "SuccessivePruning  support" in caplog.text
