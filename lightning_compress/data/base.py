"""Shared DataModule logic: a validation split carved from train with a fixed seed, loaders, file checks."""

from __future__ import annotations

import os
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from typing_extensions import override

__all__ = ["DEFAULT_DATA_DIR", "VisionDataModule", "missing_files_error"]

#: Where datasets are looked for (and cached) unless ``data_dir`` is given; override with ``LC_DATA_DIR``.
DEFAULT_DATA_DIR = os.environ.get("LC_DATA_DIR", "~/.cache/lightning_compress/data")


def missing_files_error(name: str, directory: Path, missing: Sequence[str], how: str) -> FileNotFoundError:
    """The error every datamodule raises when its files are not on disk."""
    listed = "\n  ".join(str(directory / m) for m in missing)
    return FileNotFoundError(f"{name}: files missing in {str(directory)!r}:\n  {listed}\nHow to get them: {how}")


class VisionDataModule(pl.LightningDataModule):
    """Base for the image-classification datamodules.

    Subclasses build the three datasets; this class splits validation off the training set (a fraction, with a
    fixed seed, using evaluation transforms) and serves the loaders.

    Args:
        data_dir: root directory of the dataset (``~`` expanded).
        batch_size: training batch size.
        eval_batch_size: batch size of validation/test loaders (default: ``batch_size``).
        num_workers: DataLoader workers.
        val_fraction: fraction of the training set held out for validation, in ``[0, 1)``.
        split_seed: seed of the train/validation split (fixed, so every run sees the same split).
        download: allow torchvision to download missing files (needs internet; never done by default).
        augment: apply the dataset's usual training augmentation.
        pin_memory: pin loader memory (useful on GPU).
    """

    #: Short dataset name used in messages.
    NAME: ClassVar[str] = ""
    #: ``(C, H, W)`` of one input.
    DIMS: ClassVar[tuple[int, int, int]] = (0, 0, 0)
    NUM_CLASSES: ClassVar[int] = 0

    def __init__(
        self,
        data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        download: bool = False,
        augment: bool = True,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
        if eval_batch_size is not None and (not isinstance(eval_batch_size, int) or eval_batch_size < 1):
            raise ValueError(f"`eval_batch_size` must be a positive int or None, got {eval_batch_size!r}.")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"`num_workers` must be an int >= 0, got {num_workers!r}.")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ValueError(f"`val_fraction` must be in [0, 1), got {val_fraction!r}.")
        self.data_dir = Path(data_dir).expanduser()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.val_fraction = float(val_fraction)
        self.split_seed = split_seed
        self.download = download
        self.augment = augment
        self.pin_memory = pin_memory
        self.train_set: Dataset[Any] | None = None
        self.val_set: Dataset[Any] | None = None
        self.test_set: Dataset[Any] | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes (the model's output width)."""
        return self.NUM_CLASSES

    @property
    def dims(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one input."""
        return self.DIMS

    @abstractmethod
    def _check_files(self) -> None:
        """Raise :func:`missing_files_error` when the dataset is not on disk."""

    @abstractmethod
    def _build(self, train: bool, augment: bool) -> Dataset[Any]:
        """The training (``train=True``) or test dataset with train-time or eval-time transforms."""

    @override
    def prepare_data(self) -> None:
        self._check_files()

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None and self.test_set is not None:
            return
        self._check_files()
        train_aug = self._build(train=True, augment=self.augment)
        train_eval = self._build(train=True, augment=False) if self.augment else train_aug
        n = len(train_aug)  # type: ignore[arg-type]
        n_val = round(n * self.val_fraction)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        self.train_set = Subset(train_aug, order[n_val:])
        self.val_set = Subset(train_eval, order[:n_val])
        self.test_set = self._build(train=False, augment=False)

    def _loader(self, dataset: Dataset[Any] | None, train: bool) -> DataLoader[Any]:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for a dataloader.")
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )

    @override
    def train_dataloader(self) -> DataLoader[Any]:
        return self._loader(self.train_set, train=True)

    @override
    def val_dataloader(self) -> DataLoader[Any]:
        return self._loader(self.val_set, train=False)

    @override
    def test_dataloader(self) -> DataLoader[Any]:
        return self._loader(self.test_set, train=False)
