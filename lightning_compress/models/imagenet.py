"""torchvision ResNet-18/50 for ImageNet: random init, or weights from a local file (never downloaded)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision
from torch import nn

from lightning_compress.models.registry import register_model

__all__ = ["resnet18", "resnet50"]


def _load_weights(model: nn.Module, weights_path: str | None) -> nn.Module:
    if weights_path is None:
        return model
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"`weights_path` {str(path)!r} does not exist. Give a local state_dict file (e.g. torchvision's "
            "resnet18-f37072fd.pth copied from a machine with internet); weights are never downloaded."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    model.load_state_dict(state)
    return model


@register_model("resnet18")
def resnet18(
    num_classes: int = 1000, in_shape: Sequence[int] = (3, 224, 224), weights_path: str | None = None
) -> nn.Module:
    """Torchvision ResNet-18 (11.7M parameters).

    Args:
        num_classes: output width.
        in_shape: accepted for a uniform zoo interface; the network is fully convolutional with global pooling.
        weights_path: optional local ``state_dict`` file.
    """
    return _load_weights(torchvision.models.resnet18(weights=None, num_classes=num_classes), weights_path)


@register_model("resnet50")
def resnet50(
    num_classes: int = 1000, in_shape: Sequence[int] = (3, 224, 224), weights_path: str | None = None
) -> nn.Module:
    """Torchvision ResNet-50 (25.6M parameters); arguments as :func:`resnet18`."""
    return _load_weights(torchvision.models.resnet50(weights=None, num_classes=num_classes), weights_path)
