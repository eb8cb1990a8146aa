"""GPU runs of the compression callbacks (skipped without CUDA; on a GPU machine: ``pytest tests/test_gpu.py``)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import lightning_compress as lc
from tests.helpers.models import blobs, mlp, trainer_kwargs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="Requires: [CUDA GPU]")


@pytest.mark.parametrize("method", ["weight_sharing", "successive_pruning"])
def test_callback_on_gpu_round_trips(tmp_path: Path, method: str) -> None:
    callback = (
        lc.WeightSharing(k_bounds=(2, 64), pop_size=8, n_gen=4, progress=False)
        if method == "weight_sharing"
        else lc.SuccessivePruning(target_sparsity=0.9)
    )
    torch.manual_seed(0)
    model = lc.ImageClassifier(mlp(), num_classes=4, optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9))
    train = DataLoader(blobs(256), batch_size=32)
    val = DataLoader(blobs(128, sample_seed=7), batch_size=64)
    writer = lc.ArtifactWriter(tmp_path / "gpu.lcz")
    devices: list[torch.device] = []

    class RecordDevice(pl.Callback):
        def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            devices.append(next(pl_module.parameters()).device)  # Lightning moves it back to CPU after fit

    trainer = pl.Trainer(
        callbacks=[callback, RecordDevice(), writer],
        **trainer_kwargs(tmp_path, max_epochs=3, accelerator="gpu", devices=1),
    )
    trainer.fit(model, train, val)
    assert devices[0].type == "cuda"
    loaded = lc.load(tmp_path / "gpu.lcz", model=mlp())
    for a, b in zip(model.backbone.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a.cpu(), b)


@pytest.mark.parametrize(
    "names",
    [
        ("NeuronElimination", "SuccessivePruning", "WeightSharing"),
        ("NeuronElimination", "SuccessivePruning", "Ternarization"),
        ("SuccessivePruning", "WeightSharing"),
    ],
    ids=lambda names: "+".join(n[:4] for n in names),
)
def test_composed_fit_on_gpu(tmp_path: Path, names: tuple[str, ...]) -> None:
    """Composition on CUDA: masks and frozen values held by name on the device, layers shrunk, optimizers rebuilt."""
    from tests.helpers.models import loaders
    from tests.test_composition import FACTORIES, check_effects

    torch.manual_seed(0)
    model = lc.ImageClassifier(mlp(), num_classes=4)
    devices: list[torch.device] = []

    class RecordDevice(pl.Callback):
        def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            devices.append(next(pl_module.parameters()).device)

    train, val = loaders()
    callbacks = [*[FACTORIES[n]() for n in names], RecordDevice()]
    trainer = pl.Trainer(callbacks=callbacks, **trainer_kwargs(tmp_path, max_epochs=4, accelerator="gpu", devices=1))
    trainer.fit(model, train, val)
    assert devices[0].type == "cuda"
    model.cpu()
    check_effects(names, model, lc.save(model, tmp_path / "composed.lcz"))


def test_weight_sharing_candidates_are_written_on_the_device() -> None:
    """The search writes candidates on the parameters' device, with the values the CPU path writes."""
    from lightning_compress.functional.weight_sharing import WeightSharingProblem

    torch.manual_seed(0)
    cpu = [torch.randn(300, 200) ** 3, torch.randn(50)]
    cpu[0][cpu[0].abs() < 0.05] = 0.0
    gpu = [t.cuda() for t in cpu]
    on_cpu = WeightSharingProblem(cpu, lambda: 0.0, keep_zeros=[True, False])
    on_gpu = WeightSharingProblem(gpu, lambda: 0.0, keep_zeros=[True, False])
    for k in (2, 17, 300):
        on_cpu.evaluate_k(k)
        on_gpu.evaluate_k(k)
        assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, gpu, strict=True))


@pytest.mark.parametrize(("sparsity", "refine_steps"), [(0.2, 0), (0.95, 0), (0.9, 3)])
def test_surp_decisions_are_the_same_on_cpu_and_cuda(sparsity: float, refine_steps: int) -> None:
    from lightning_compress.functional.successive_pruning import magnitudes, refine

    torch.manual_seed(0)
    tensors = [torch.randn(300, 784), torch.randn(300), torch.randn(100, 300) * 3]
    results = []
    for device in ("cpu", "cuda"):
        u, norms = magnitudes([t.to(device) for t in tensors])
        results.append((refine(u, target_sparsity=sparsity, refine_steps=refine_steps), norms))
    (cpu, cpu_norms), (gpu, gpu_norms) = results
    assert cpu_norms == gpu_norms
    assert cpu.t0 == gpu.t0
    assert torch.equal(torch.as_tensor(cpu.recon), torch.as_tensor(gpu.recon).cpu())  # bit for bit
    assert len(cpu.rounds) == len(gpu.rounds)
    assert all(np.array_equal(a, b) for a, b in zip(cpu.rounds, gpu.rounds, strict=True))
