"""Tiny datasets written in the exact on-disk formats torchvision reads (IDX, CIFAR pickles, image folders)."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IDX_NAMES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: 00 00 08 <ndim>, big-endian sizes, raw bytes."""
    assert array.dtype == np.uint8
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def learnable_images(n: int, num_classes: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is visible (a bright class-specific block), so a tiny model can learn them."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, *shape)).astype(np.uint8)
    h = shape[-2]
    band = max(h // num_classes, 1)
    for i, y in enumerate(labels):
        images[i, ..., (y * band) % h : (y * band) % h + band, :] = 250
    return images, labels


def write_idx_dataset(raw_dir: Path, n_train: int = 240, n_test: int = 120, gz: bool = False, seed: int = 0) -> Path:
    """MNIST/FashionMNIST raw files (uncompressed, or ``.gz`` as Debian ships them)."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = learnable_images(n, 10, (28, 28), seed + (split == "test"))
        for kind, arr in (("images", images), ("labels", labels)):
            data = idx_bytes(arr)
            name = IDX_NAMES[(split, kind)]
            if gz:
                (raw_dir / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (raw_dir / name).write_bytes(data)
    return raw_dir


def write_cifar(root: Path, num_classes: int = 10, n_train: int = 100, n_test: int = 50) -> Path:
    """CIFAR-10 (``cifar-10-batches-py``) or CIFAR-100 (``cifar-100-python``) pickles."""
    folder = root / ("cifar-10-batches-py" if num_classes == 10 else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    key = "labels" if num_classes == 10 else "fine_labels"

    def batch(n: int, seed: int) -> dict[str, object]:
        images, labels = learnable_images(n, num_classes, (3, 32, 32), seed)
        return {"data": images.reshape(n, 3072), key: [int(v) for v in labels]}

    def dump(name: str, obj: object) -> None:
        with open(folder / name, "wb") as fh:
            pickle.dump(obj, fh)

    if num_classes == 10:
        for i in range(1, 6):
            dump(f"data_batch_{i}", batch(n_train // 5, i))
        dump("test_batch", batch(n_test, 99))
        dump("batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    else:
        dump("train", batch(n_train, 1))
        dump("test", batch(n_test, 99))
        dump("meta", {"fine_label_names": [f"class{i}" for i in range(100)]})
    return folder


def write_image_folders(root: Path, classes: list[str], per_class: int = 3, size: int = 40) -> Path:
    """``root/{train,val}/<class>/*.JPEG`` with small random JPEGs."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{c}_{i}.JPEG")
    return root


def write_imagenet_meta(root: Path, wnids: list[str]) -> None:
    """torchvision's ``meta.bin``: ``(wnid -> class names, val wnids)``."""
    torch.save(({w: (f"name of {w}",) for w in wnids}, []), root / "meta.bin")
