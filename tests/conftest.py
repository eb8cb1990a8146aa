"""Shared fixtures: W&B disabled, fake Fashion-MNIST on disk, composed Hydra configs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from tests.helpers.fake_data import write_idx_dataset

os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def fake_fmnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir holding a tiny Fashion-MNIST in torchvision's raw layout."""
    root = tmp_path_factory.mktemp("data")
    write_idx_dataset(root / "FashionMNIST" / "raw")
    write_idx_dataset(root / "MNIST" / "raw", seed=5)
    return root


def compose_train(overrides: list[str], output_dir: Path, data_dir: Path | None = None) -> DictConfig:
    """Compose ``train.yaml`` like ``lcompress`` would, shrunk for tests, with the Hydra run config set."""
    GlobalHydra.instance().clear()
    with initialize_config_module(version_base="1.3", config_module="lightning_compress.conf"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
        cfg.hydra.job.id = "test"
        if data_dir is not None:
            cfg.paths.data_dir = str(data_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def train_cfg(tmp_path: Path, fake_fmnist_root: Path) -> Iterator[DictConfig]:
    """The default config on fake Fashion-MNIST: 1 short epoch, CSV logger, no checkpoints."""
    cfg = compose_train(
        ["debug=fast", "logger=csv", "data.debian_dir=/nonexistent", "data.batch_size=32"], tmp_path, fake_fmnist_root
    )
    yield cfg
    GlobalHydra.instance().clear()
