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
