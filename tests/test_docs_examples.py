"""Every Python example in the README and the docs runs, at tiny settings where the page shows real ones.

Each ```python block runs in a fresh namespace that defines what the pages leave to the reader (a user's
LightningModule ``MyLightningModule`` holding ``MyNet`` as ``self.net``, a ``model``, a datamodule ``dm``, loaders,
calibration batches) on fake Fashion-MNIST; ``pl.Trainer`` is shrunk to one short epoch. A block that no longer runs
against the library fails here, with the page and the block's first line in the test id.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import lightning_compress as lc
import lightning_compress.data as lc_data

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _examples() -> list[Any]:
    params = []
    for page in PAGES:
        for i, match in enumerate(_BLOCK.finditer(page.read_text())):
            code = match.group(1)
            first = next((line for line in code.splitlines() if line.strip()), "")[:40]
            params.append(pytest.param(code, id=f"{page.relative_to(ROOT)}[{i}] {first}"))
    return params


class MyNet(nn.Sequential):
    """A user's network: a small MLP on 28x28 images."""

    def __init__(self) -> None:
        super().__init__(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


class MyLightningModule(pl.LightningModule):
    """What a user writes: no lightning_compress base class, its own metric names."""

    def __init__(self) -> None:
        super().__init__()
        self.net = MyNet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def _tiny_trainer(**kwargs: Any) -> pl.Trainer:
    settings = {
        **kwargs,
        "max_epochs": 1,
        "limit_train_batches": 6,
        "limit_val_batches": 2,
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return pl.Trainer(**settings)


@pytest.mark.parametrize("code", _examples())
def test_documented_example_runs(
    code: str, tmp_path: Path, fake_fmnist_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    class FashionMNISTDataModule(lc_data.FashionMNISTDataModule):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**{"data_dir": fake_fmnist_root, "debian_dir": "/none", "batch_size": 32, **kwargs})

    monkeypatch.setattr(lc_data, "FashionMNISTDataModule", FashionMNISTDataModule)
    tiny_pl = type("pl", (), {"Trainer": staticmethod(_tiny_trainer), "LightningModule": pl.LightningModule})
    torch.manual_seed(0)
    dm = FashionMNISTDataModule()
    dm.prepare_data()
    dm.setup("fit")
    images = torch.randn(256, 1, 28, 28)
    labels = torch.randint(0, 10, (256,))
    namespace: dict[str, Any] = {
        "pl": tiny_pl,
        "lc": lc,
        "torch": torch,
        "nn": nn,
        "MyNet": MyNet,
        "MyLightningModule": MyLightningModule,
        "model": MyLightningModule(),
        "dm": dm,
        "net": MyNet(),
        "train_loader": DataLoader(TensorDataset(images, labels), batch_size=32),
        "val_loader": DataLoader(TensorDataset(images[:64], labels[:64]), batch_size=32),
        # 10 rows per neuron at least (MyNet's widest layer has 64)
        "calibration_batches": [torch.randn(512, 1, 28, 28), torch.randn(512, 1, 28, 28)],
    }
    # the pages import Lightning themselves: the import gives the shrunk Trainer too
    code = code.replace("import lightning.pytorch as pl\n", "")
    exec(compile(code, "<documented example>", "exec"), namespace)  # noqa: S102 - the docs' own examples
