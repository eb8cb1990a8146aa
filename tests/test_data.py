from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
import torch

from lightning_compress.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    ImageNetDataModule,
    MNISTDataModule,
)
from tests.helpers.fake_data import write_cifar, write_idx_dataset, write_image_folders, write_imagenet_meta


def test_fashion_mnist_from_debian_copy_decompressed_once(tmp_path: Path) -> None:
    debian = write_idx_dataset(tmp_path / "debian", gz=True)
    dm = FashionMNISTDataModule(data_dir=tmp_path / "cache", debian_dir=str(debian), batch_size=16, val_fraction=0.25)
    dm.prepare_data()
    raw = tmp_path / "cache" / "FashionMNIST" / "raw"
    stamps = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    assert sorted(stamps) == sorted(p.name.removesuffix(".gz") for p in debian.iterdir())
    assert dm.decompress_debian_copy() is False  # nothing left to do
    dm.setup("fit")
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == stamps
    assert len(dm.train_set) == 180
    assert len(dm.val_set) == 60
    assert len(dm.test_set) == 120
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 28, 28)
    assert x.dtype == torch.float32
    assert y.dtype == torch.int64
    assert abs(float(x.mean())) < 3.0


def test_split_is_fixed_and_disjoint(fake_fmnist_root: Path) -> None:
    def indices(seed: int) -> tuple[list[int], list[int]]:
        dm = MNISTDataModule(data_dir=fake_fmnist_root, val_fraction=0.2, split_seed=seed)
        dm.setup()
        return list(dm.train_set.indices), list(dm.val_set.indices)

    train, val = indices(0)
    assert not set(train) & set(val)
    assert len(train) + len(val) == 240
    assert indices(0) == (train, val)
    assert indices(1)[1] != val


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (MNISTDataModule, "MNIST/raw"),
        (FashionMNISTDataModule, "apt-get install dataset-fashion-mnist"),
        (CIFAR10DataModule, "cifar-10-batches-py"),
        (CIFAR100DataModule, "cifar-100-python"),
        (ImageNetDataModule, "train/<class>/\\*.JPEG"),
    ],
)
def test_missing_files_message(tmp_path: Path, cls: type, expected: str) -> None:
    kwargs = {"debian_dir": str(tmp_path / "none")} if cls is FashionMNISTDataModule else {}
    dm = cls(data_dir=tmp_path / "empty", **kwargs)
    with pytest.raises(FileNotFoundError, match=expected) as err:
        dm.prepare_data()
    assert str(tmp_path / "empty") in str(err.value)
    assert "How to get them" in str(err.value)


@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_fake_pickles(tmp_path: Path, num_classes: int) -> None:
    write_cifar(tmp_path, num_classes)
    cls = CIFAR10DataModule if num_classes == 10 else CIFAR100DataModule
    dm = cls(data_dir=tmp_path, batch_size=8, val_fraction=0.2)
    # torchvision verifies the md5 of real CIFAR files; fakes pass an existence check instead.
    with mock.patch("torchvision.datasets.cifar.check_integrity", lambda path, md5=None: Path(path).is_file()):
        dm.setup()
    assert dm.num_classes == num_classes
    assert dm.dims == (3, 32, 32)
    assert len(dm.train_set) == 80
    assert len(dm.val_set) == 20
    assert len(dm.test_set) == 50
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32)
    assert int(y.max()) < num_classes
    # validation uses evaluation transforms: deterministic
    assert torch.equal(dm.val_set[0][0], dm.val_set[0][0])


@pytest.mark.parametrize("with_meta", [False, True])
def test_imagenet_layouts(tmp_path: Path, with_meta: bool) -> None:
    classes = ["n01440764", "n01443537", "n01484850"]
    write_image_folders(tmp_path, classes, per_class=4)
    if with_meta:
        write_imagenet_meta(tmp_path, classes)
    dm = ImageNetDataModule(data_dir=tmp_path, image_size=32, batch_size=4, val_fraction=0.25)
    dm.setup()
    assert dm.num_classes == 3
    assert dm.dims == (3, 32, 32)
    assert len(dm.train_set) == 9
    assert len(dm.val_set) == 3
    assert len(dm.test_set) == 12
    x, _ = next(iter(dm.test_dataloader()))
    assert x.shape == (4, 3, 32, 32)
    if with_meta:
        assert dm.test_set.classes[0] == ("name of n01440764",)


def test_invalid_arguments(tmp_path: Path) -> None:
    for kwargs, match in [
        ({"batch_size": 0}, "`batch_size`"),
        ({"val_fraction": 1.0}, "`val_fraction`"),
        ({"num_workers": -1}, "`num_workers`"),
        ({"eval_batch_size": 0}, "`eval_batch_size`"),
    ]:
        with pytest.raises(ValueError, match=match):
            MNISTDataModule(data_dir=tmp_path, **kwargs)
    with pytest.raises(ValueError, match="`download` is not supported for ImageNet"):
        ImageNetDataModule(data_dir=tmp_path, download=True)
