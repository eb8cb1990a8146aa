"""Each callback under the Trainer settings users turn on: it compresses, the artifact reloads to the same outputs.

``fast_dev_run`` is the exception by design: nothing is compressed, nothing crashes, and the artifact is valid.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

import lightning_compress as lc
from tests.helpers.models import blobs, loaders, mlp, trainer_kwargs

CALLBACKS: dict[str, Callable[[], pl.Callback]] = {
    "neuron_elimination": lambda: lc.NeuronElimination(
        target_params=0.5, rounds=3, min_rows_per_neuron=2, verbose=False
    ),
    "successive_pruning": lambda: lc.SuccessivePruning(target_sparsity=0.8),
    "ternarization": lambda: lc.Ternarization(),
    "weight_sharing": lambda: lc.WeightSharing(k_bounds=(2, 16), pop_size=4, n_gen=2, progress=False),
}
SETTINGS: dict[str, dict[str, object]] = {
    "bf16_mixed": {"precision": "bf16-mixed", "max_epochs": 3},
    "accumulate_grad_batches": {"accumulate_grad_batches": 2, "max_epochs": 4},
    "max_steps": {"max_steps": 20, "max_epochs": -1},
    "check_val_every_n_epoch": {"check_val_every_n_epoch": 2, "max_epochs": 4},
    "fast_dev_run": {"fast_dev_run": True},
}


def _compressed(method: str, module: torch.nn.Module, path: Path) -> bool:
    """Whether the method's effect is in the model and its artifact."""
    dense = sum(p.numel() for p in mlp().parameters())
    codecs = {r.codec for r in lc.read_artifact(path).tensors}
    if method == "neuron_elimination":
        return sum(p.numel() for p in module.parameters()) <= 0.5 * dense
    if method == "successive_pruning":
        flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
        return bool((flat == 0).float().mean() >= 0.75) and codecs == {"surp"}
    if method == "ternarization":
        return "ternary" in codecs
    return codecs == {"codebook"}


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("method", list(CALLBACKS))
def test_callback_under_trainer_setting(tmp_path: Path, method: str, setting: str) -> None:
    torch.manual_seed(0)
    model = lc.ImageClassifier(mlp(), num_classes=4, optimizer=partial(torch.optim.Adam, lr=0.01))
    train, val = loaders()
    pl.Trainer(callbacks=[CALLBACKS[method]()], **trainer_kwargs(tmp_path, **SETTINGS[setting])).fit(model, train, val)
    path = lc.save(model, tmp_path / "model.lcz")
    loaded = lc.load(path, model=mlp())
    x = blobs(32, sample_seed=5).tensors[0]
    assert torch.equal(loaded(x), model.backbone.eval()(x))
    if setting == "fast_dev_run":
        assert not _compressed(method, model.backbone, path)
        assert {r.codec for r in lc.read_artifact(path).tensors} == {"dense"}
    else:
        assert _compressed(method, model.backbone, path)


class _Indexed(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Blobs as (inputs, targets, index): the fit records which samples each epoch saw."""

    def __init__(self) -> None:
        self.x, self.y = blobs(256).tensors

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.x[i], self.y[i], i


def test_calibration_reads_its_own_batches_not_the_fits_live_iterator(tmp_path: Path) -> None:
    """With persistent workers, an ``iter()`` of the fit's own loader mid-epoch would restart the fit's epoch."""
    seen: list[list[int]] = []

    class Recording(lc.ImageClassifier):
        def on_train_epoch_start(self) -> None:
            seen.append([])

        def training_step(self, batch: object, batch_idx: int) -> torch.Tensor:
            x, y, index = batch  # type: ignore[misc]
            seen[-1].extend(index.tolist())
            return super().training_step((x, y), batch_idx)

    torch.manual_seed(0)
    model = Recording(mlp(), num_classes=4, optimizer=partial(torch.optim.Adam, lr=0.01))
    train = torch.utils.data.DataLoader(_Indexed(), batch_size=32, shuffle=True, num_workers=1, persistent_workers=True)
    # rounds and BatchNorm-free calibration passes land mid-epoch: every epoch must still see each sample once
    callback = lc.NeuronElimination(target_params=0.5, rounds=6, min_rows_per_neuron=2, verbose=False)
    pl.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, max_epochs=2)).fit(model, train)
    assert callback.compressed
    assert [sorted(epoch) for epoch in seen] == [list(range(256))] * 2


def test_calibration_and_the_guard_see_batches_through_the_transfer_hooks(tmp_path: Path) -> None:
    """A model that needs its LightningModule's ``on_after_batch_transfer`` (here: flat inputs from 4x4 ones)."""

    class Reshaping(lc.ImageClassifier):
        def on_after_batch_transfer(self, batch: object, dataloader_idx: int) -> object:
            x, y = batch  # type: ignore[misc]
            return x.reshape(len(x), -1), y

    def square(data: torch.utils.data.TensorDataset) -> torch.utils.data.TensorDataset:
        x, y = data.tensors
        return torch.utils.data.TensorDataset(x.reshape(-1, 4, 4), y)

    torch.manual_seed(0)
    model = Reshaping(mlp(hidden=64), num_classes=4, optimizer=partial(torch.optim.Adam, lr=0.01))
    train = torch.utils.data.DataLoader(square(blobs(512)), batch_size=32, shuffle=True)
    val = torch.utils.data.DataLoader(square(blobs(512, sample_seed=100)), batch_size=128)
    # NeuronElimination calibrates on training batches; SuccessivePruning's default guard scores validation ones
    callbacks = [
        lc.NeuronElimination(target_params=0.5, rounds=3, min_rows_per_neuron=2, verbose=False),
        lc.SuccessivePruning(),
    ]
    pl.Trainer(callbacks=callbacks, **trainer_kwargs(tmp_path, max_epochs=3)).fit(model, train, val)
    assert all(cb.compressed for cb in callbacks)


class _ManualClassifier(lc.ImageClassifier):
    """Manual optimization: the user calls the optimizer's step (through Lightning's wrapper) in training_step."""

    def __init__(self) -> None:
        super().__init__(mlp(), num_classes=4, optimizer=partial(torch.optim.Adam, lr=0.01))
        self.automatic_optimization = False

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        optimizer = self.optimizers()
        assert isinstance(optimizer, pl.core.optimizer.LightningOptimizer)
        optimizer.zero_grad()
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self(x), y)
        self.manual_backward(loss)
        optimizer.step()
        return loss


def test_holds_put_back_after_every_optimizer_step_and_the_hooks_removed(tmp_path: Path) -> None:
    """Masks go back from a hook on the optimizer: a manual-optimization step keeps its zeros, nothing stays hooked."""
    torch.manual_seed(0)
    cb = lc.SuccessivePruning(target_sparsity=0.8, stages=[0.5, 0.8], final_fraction=0.5)
    model = _ManualClassifier()
    checked: list[int] = []

    class CheckZeros(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
            if cb.holds.support:
                params = dict(model.backbone.named_parameters())
                assert all(torch.all(params[n][~m] == 0) for n, m in cb.holds.support.items())
                checked.append(trainer.global_step)
            # the hook is on the very optimizer the user steps
            assert len(trainer.optimizers[0]._optimizer_step_post_hooks) == 1

    train, val = loaders()
    trainer = pl.Trainer(callbacks=[cb, CheckZeros()], **trainer_kwargs(tmp_path, max_epochs=4))
    trainer.fit(model, train, val)
    assert len(checked) > 5
    assert cb.step_hooks.calls == trainer.global_step  # once per optimizer step
    assert not trainer.optimizers[0]._optimizer_step_post_hooks  # removed at the end of the fit
    flat = torch.cat([p.detach().reshape(-1) for p in model.backbone.parameters()])
    assert (flat == 0).float().mean() == pytest.approx(0.8, abs=0.01)
