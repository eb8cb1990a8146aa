"""CIFAR models: ResNet-20/32/56 (He et al. 2016, option-A shortcuts), ResNet-18 (CIFAR stem) and VGG-16-BN."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_compress.models.registry import register_model

__all__ = ["resnet18_cifar", "resnet20", "resnet32", "resnet56", "vgg16_bn"]


class PadShortcut(nn.Module):
    """Parameter-free "option A" shortcut: subsample by 2 and zero-pad the channels."""

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.extra_channels // 2
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, self.extra_channels - pad))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection."""

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = PadShortcut(planes - in_planes)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: 3x3 stem, no max-pool, stages of :class:`BasicBlock`, global pooling, linear head."""

    def __init__(
        self, blocks: Sequence[int], widths: Sequence[int], num_classes: int, in_channels: int, shortcut: str
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        stages: list[nn.Module] = []
        in_planes = widths[0]
        for i, (n, width) in enumerate(zip(blocks, widths, strict=True)):
            layers = []
            for j in range(n):
                layers.append(BasicBlock(in_planes, width, 2 if (j == 0 and i > 0) else 1, shortcut))
                in_planes = width
            stages.append(nn.Sequential(*layers))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.fc(self.flatten(self.pool(self.layers(x))))


def _resnet_cifar(depth: int, num_classes: int, in_shape: Sequence[int]) -> CifarResNet:
    n = (depth - 2) // 6
    return CifarResNet([n] * 3, [16, 32, 64], num_classes, in_shape[0], shortcut="A")


@register_model("resnet20")
def resnet20(num_classes: int = 10, in_shape: Sequence[int] = (3, 32, 32)) -> CifarResNet:
    """ResNet-20 for CIFAR (0.27M parameters)."""
    return _resnet_cifar(20, num_classes, in_shape)


@register_model("resnet32")
def resnet32(num_classes: int = 10, in_shape: Sequence[int] = (3, 32, 32)) -> CifarResNet:
    """ResNet-32 for CIFAR (0.46M parameters)."""
    return _resnet_cifar(32, num_classes, in_shape)


@register_model("resnet56")
def resnet56(num_classes: int = 10, in_shape: Sequence[int] = (3, 32, 32)) -> CifarResNet:
    """ResNet-56 for CIFAR (0.85M parameters)."""
    return _resnet_cifar(56, num_classes, in_shape)


@register_model("resnet18_cifar")
def resnet18_cifar(num_classes: int = 10, in_shape: Sequence[int] = (3, 32, 32)) -> CifarResNet:
    """ResNet-18 with the CIFAR stem (3x3 conv, no max-pool) and 1x1-conv shortcuts (11.2M parameters)."""
    return CifarResNet([2, 2, 2, 2], [64, 128, 256, 512], num_classes, in_shape[0], shortcut="B")


_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


@register_model("vgg16_bn")
def vgg16_bn(num_classes: int = 10, in_shape: Sequence[int] = (3, 32, 32)) -> nn.Sequential:
    """VGG-16 with BatchNorm for 32x32 inputs: 13 conv-BN-ReLU layers, 5 max-pools, a linear head (15M parameters)."""
    layers: list[nn.Module] = []
    channels = in_shape[0]
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(channels, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU()]
            channels = int(v)
    spatial = (in_shape[1] // 32) * (in_shape[2] // 32)
    layers += [nn.Flatten(), nn.Linear(channels * spatial, num_classes)]
    return nn.Sequential(*layers)
