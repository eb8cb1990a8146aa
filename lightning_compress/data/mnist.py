"""MNIST and Fashion-MNIST, read with torchvision from its on-disk IDX layout and kept in memory as tensors.

Fashion-MNIST is also found in Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``):
its gzipped IDX files are decompressed once into ``data_dir/FashionMNIST/raw`` and reused afterwards.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import torchvision
from torch.utils.data import Dataset, TensorDataset
from typing_extensions import override

from lightning_compress.data.base import DEFAULT_DATA_DIR, VisionDataModule, missing_files_error

__all__ = ["DEBIAN_FASHION_MNIST_DIR", "FashionMNISTDataModule", "MNISTDataModule"]

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class _IDXDataModule(VisionDataModule):
    """Shared code of the two 28x28 grey-scale datasets (no augmentation: the usual practice for them)."""

    DATASET: ClassVar[type[torchvision.datasets.MNIST]] = torchvision.datasets.MNIST
    DIMS = (1, 28, 28)
    NUM_CLASSES = 10
    MEAN: ClassVar[float] = 0.0
    STD: ClassVar[float] = 1.0
    HOW_TO_GET: ClassVar[str] = ""

    @property
    def raw_dir(self) -> Path:
        """Where torchvision expects the uncompressed IDX files."""
        return self.data_dir / self.DATASET.__name__ / "raw"

    def _missing(self) -> list[str]:
        return [f for f in _IDX_FILES if not (self.raw_dir / f).is_file()]

    @override
    def prepare_data(self) -> None:
        if self._missing() and self.download:
            self.DATASET(str(self.data_dir), train=True, download=True)
            self.DATASET(str(self.data_dir), train=False, download=True)
        self._check_files()

    @override
    def _check_files(self) -> None:
        missing = self._missing()
        if missing:
            raise missing_files_error(self.NAME, self.raw_dir, missing, self.HOW_TO_GET)

    @override
    def _build(self, train: bool, augment: bool) -> Dataset[Any]:
        ds = self.DATASET(str(self.data_dir), train=train, download=False)
        # Normalise once into memory: far faster than per-item PIL transforms for 28x28 images.
        x = (ds.data.unsqueeze(1).float() / 255.0 - self.MEAN) / self.STD
        return TensorDataset(x, ds.targets.long())


class MNISTDataModule(_IDXDataModule):
    """MNIST (LeCun et al.), 60k/10k 28x28 digits; files in ``data_dir/MNIST/raw`` (torchvision layout).

    Examples:
        >>> from lightning_compress.data import MNISTDataModule
        >>> MNISTDataModule(batch_size=64).dims
        (1, 28, 28)
    """

    NAME = "MNIST"
    DATASET = torchvision.datasets.MNIST
    MEAN, STD = 0.1307, 0.3081
    HOW_TO_GET = (
        "copy the four uncompressed IDX files there (torchvision's MNIST layout), "
        "or pass `download=True` (data.download=true) on a machine with internet."
    )


class FashionMNISTDataModule(_IDXDataModule):
    """Fashion-MNIST (Xiao et al. 2017), 60k/10k 28x28 clothing images.

    Looks for ``data_dir/FashionMNIST/raw``; when absent, decompresses Debian's copy from ``debian_dir`` there once.

    Args:
        debian_dir: directory of Debian's gzipped IDX files (package ``dataset-fashion-mnist``).
        **kwargs: see :class:`~lightning_compress.data.base.VisionDataModule`.
    """

    NAME = "FashionMNIST"
    DATASET = torchvision.datasets.FashionMNIST
    MEAN, STD = 0.2860, 0.3530
    HOW_TO_GET = (
        "on Debian/Ubuntu `sudo apt-get install dataset-fashion-mnist` (found automatically in "
        f"{DEBIAN_FASHION_MNIST_DIR}), or pass `download=True` (data.download=true) on a machine with internet."
    )

    def __init__(
        self,
        data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR,
        debian_dir: str = DEBIAN_FASHION_MNIST_DIR,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_dir, **kwargs)
        self.debian_dir = Path(debian_dir)

    @override
    def prepare_data(self) -> None:
        self.decompress_debian_copy()
        super().prepare_data()

    @override
    def setup(self, stage: str | None = None) -> None:
        self.decompress_debian_copy()
        super().setup(stage)

    def decompress_debian_copy(self) -> bool:
        """Decompress missing IDX files from ``debian_dir`` into :attr:`raw_dir`; returns whether any was written."""
        wrote = False
        for name in self._missing():
            source = self.debian_dir / f"{name}.gz"
            if not source.is_file():
                continue
            self.raw_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.raw_dir, prefix=f".{name}.")
            with gzip.open(source, "rb") as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, self.raw_dir / name)
            wrote = True
        return wrote
