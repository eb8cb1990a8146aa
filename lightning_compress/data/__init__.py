"""DataModules for MNIST, Fashion-MNIST, CIFAR-10/100 and ImageNet (torchvision datasets underneath)."""

from lightning_compress.data.base import DEFAULT_DATA_DIR, VisionDataModule
from lightning_compress.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from lightning_compress.data.imagenet import ImageNetDataModule
from lightning_compress.data.mnist import FashionMNISTDataModule, MNISTDataModule

__all__ = [
    "DEFAULT_DATA_DIR",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "FashionMNISTDataModule",
    "ImageNetDataModule",
    "MNISTDataModule",
    "VisionDataModule",
]
