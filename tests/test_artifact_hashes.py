"""The recipes' artifacts, byte for byte: a refactor that keeps behaviour keeps these SHA-256 digests.

Each recipe runs shrunk (as in ``test_every_recipe_runs_on_fake_data``) on fixed seeds and fake data; the digest of
its ``.lcz`` is compared with ``tests/data/artifact_hashes.json``. The digests are those of one CPU kernel family
(``torch.backends.cpu.get_cpu_capability()``): float sums differ between AVX2 and AVX-512 kernels, so on a machine
of another family the test is skipped, saying so. A change that is meant to change the bytes rewrites the file:
``LC_WRITE_HASHES=1 pytest tests/test_artifact_hashes.py`` (and says why in its commit).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from lightning_compress.cli import train
from tests.conftest import compose_train

HASHES = Path(__file__).parent / "data" / "artifact_hashes.json"
RECIPES = (
    "full_lenet300_fmnist",
    "rate_lenet300_fmnist",
    "surp_lenet300_fmnist",
    "share_lenet300_fmnist",
    "ternary_lenet300_fmnist",
)
SHRINK = {
    "weight_sharing": {"pop_size": 4, "n_gen": 2, "k_bounds": [2, 24], "progress": False},
    "successive_pruning": {"stages": [0.5, 0.8]},
    "ternarization": {"restarts": 3, "calibration_batches": 2},
    "neuron_elimination": {"rounds": 2, "min_rows_per_neuron": 1},
}


def _capability() -> str:
    return f"torch-{torch.__version__.split('+')[0]}-{torch.backends.cpu.get_cpu_capability()}"


def artifact_digest(recipe: str, tmp_path: Path, data_root: Path) -> str:
    """SHA-256 of the artifact ``recipe`` writes, shrunk to a few steps of fake Fashion-MNIST, seed 42."""
    overrides = [
        f"recipe={recipe}",
        "debug=fast",
        "trainer=cpu",
        "trainer.precision=32-true",
        "trainer.limit_train_batches=6",
        "trainer.max_epochs=2",
        "data.num_workers=0",
        "data.pin_memory=false",
        "data.batch_size=8",
        "data.eval_batch_size=16",
        "data.val_fraction=0.25",
        "data.debian_dir=/none",
        "artifact.verify=false",
        "test=false",
        "reference.file=null",
    ]
    cfg = compose_train(overrides, tmp_path, data_root)
    with open_dict(cfg):
        for name, node in (cfg.get("compress") or {}).items():
            node.update(SHRINK.get(name, {}))
    try:
        _, objects = train(cfg)
    finally:
        GlobalHydra.instance().clear()
    return hashlib.sha256(Path(objects["artifact_path"]).read_bytes()).hexdigest()


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_artifact_is_byte_identical(tmp_path: Path, fake_fmnist_root: Path, recipe: str) -> None:
    torch.set_num_threads(1)  # one thread: the same reduction order whatever the machine's cores
    digest = artifact_digest(recipe, tmp_path, fake_fmnist_root)
    stored = json.loads(HASHES.read_text()) if HASHES.is_file() else {}
    key = _capability()
    if os.environ.get("LC_WRITE_HASHES"):
        stored.setdefault(key, {})[recipe] = digest
        HASHES.write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")
        return
    if key not in stored:
        pytest.skip(f"no stored digests for {key} (stored: {sorted(stored)}); LC_WRITE_HASHES=1 writes them")
    assert digest == stored[key][recipe], f"{recipe}'s artifact changed"
