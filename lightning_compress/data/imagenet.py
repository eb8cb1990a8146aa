"""ImageNet from ``train/`` and ``val/`` class folders, or torchvision's ImageNet layout (``meta.bin`` + folders)."""

from __future__ import annotations

import os
from typing import Any

import torchvision
from torch.utils.data import Dataset
from torchvision import transforms as T
from typing_extensions import override

from lightning_compress.data.base import DEFAULT_DATA_DIR, VisionDataModule, missing_files_error

__all__ = ["ImageNetDataModule"]

_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ImageNetDataModule(VisionDataModule):
    """ImageNet (ILSVRC-2012). The official validation set is the test set; validation is carved from train.

    Args:
        data_dir: directory with ``train/<class>/*.JPEG`` and ``val/<class>/*.JPEG`` (plus ``meta.bin`` for
            torchvision's ImageNet layout, which then names the classes).
        image_size: crop size (224 usual); evaluation resizes to ``image_size * 8 // 7`` and centre-crops.
        **kwargs: see :class:`~lightning_compress.data.base.VisionDataModule`.
    """

    NAME = "ImageNet"
    NUM_CLASSES = 1000

    def __init__(
        self, data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR, image_size: int = 224, **kwargs: Any
    ) -> None:
        super().__init__(data_dir, **kwargs)
        if kwargs.get("download"):
            raise ValueError("`download` is not supported for ImageNet: it must be obtained from image-net.org.")
        self.image_size = image_size

    @property
    @override
    def dims(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    @property
    @override
    def num_classes(self) -> int:
        train = self.data_dir / "train"
        if train.is_dir():
            return sum(1 for p in train.iterdir() if p.is_dir())
        return self.NUM_CLASSES

    @override
    def _check_files(self) -> None:
        missing = [d for d in ("train", "val") if not (self.data_dir / d).is_dir()]
        if missing:
            raise missing_files_error(
                self.NAME,
                self.data_dir,
                [f"{d}/<class>/*.JPEG" for d in missing],
                "download ILSVRC-2012 from image-net.org and arrange train/ and val/ as one folder per class "
                "(or run torchvision.datasets.ImageNet once to build its layout).",
            )

    @override
    def _build(self, train: bool, augment: bool) -> Dataset[Any]:
        if augment:
            ops: list[Any] = [T.RandomResizedCrop(self.image_size), T.RandomHorizontalFlip()]
        else:
            ops = [T.Resize(self.image_size * 8 // 7), T.CenterCrop(self.image_size)]
        transform = T.Compose([*ops, T.ToTensor(), T.Normalize(_MEAN, _STD)])
        split = "train" if train else "val"
        if (self.data_dir / "meta.bin").is_file():
            return torchvision.datasets.ImageNet(str(self.data_dir), split=split, transform=transform)
        return torchvision.datasets.ImageFolder(str(self.data_dir / split), transform=transform)
