"""CIFAR-10 and CIFAR-100 in torchvision's pickled-batch layout, with the usual crop+flip augmentation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torchvision
from torch.utils.data import Dataset
from torchvision import transforms as T
from typing_extensions import override

from lightning_compress.data.base import VisionDataModule, missing_files_error

__all__ = ["CIFAR10DataModule", "CIFAR100DataModule"]


class _CIFARDataModule(VisionDataModule):
    DATASET: ClassVar[type[torchvision.datasets.CIFAR10]] = torchvision.datasets.CIFAR10
    FOLDER: ClassVar[str] = ""
    FILES: ClassVar[tuple[str, ...]] = ()
    DIMS = (3, 32, 32)
    MEAN: ClassVar[tuple[float, float, float]] = (0.0, 0.0, 0.0)
    STD: ClassVar[tuple[float, float, float]] = (1.0, 1.0, 1.0)

    @property
    def folder(self) -> Path:
        """Directory holding the pickled batches."""
        return self.data_dir / self.FOLDER

    @override
    def prepare_data(self) -> None:
        if self.download:
            self.DATASET(str(self.data_dir), train=True, download=True)
            self.DATASET(str(self.data_dir), train=False, download=True)
        self._check_files()

    @override
    def _check_files(self) -> None:
        missing = [f for f in self.FILES if not (self.folder / f).is_file()]
        if missing:
            raise missing_files_error(
                self.NAME,
                self.folder,
                missing,
                f"extract the python version of {self.NAME} (cifar-*-python.tar.gz from "
                "https://www.cs.toronto.edu/~kriz/cifar.html) into `data_dir`, or pass `download=True`.",
            )

    @override
    def _build(self, train: bool, augment: bool) -> Dataset[Any]:
        ops: list[Any] = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if augment else []
        ops += [T.ToTensor(), T.Normalize(self.MEAN, self.STD)]
        return self.DATASET(str(self.data_dir), train=train, transform=T.Compose(ops), download=False)


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10: 50k/10k 32x32 colour images, 10 classes; files in ``data_dir/cifar-10-batches-py``."""

    NAME = "CIFAR10"
    DATASET = torchvision.datasets.CIFAR10
    FOLDER = "cifar-10-batches-py"
    FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
    NUM_CLASSES = 10
    MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100: 50k/10k 32x32 colour images, 100 fine classes; files in ``data_dir/cifar-100-python``."""

    NAME = "CIFAR100"
    DATASET = torchvision.datasets.CIFAR100
    FOLDER = "cifar-100-python"
    FILES = ("train", "test", "meta")
    NUM_CLASSES = 100
    MEAN, STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
