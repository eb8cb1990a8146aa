"""LeNet-300-100 and LeNet-5 (Caffe layer sizes) for 28x28 (or any) images."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from lightning_compress.models.registry import register_model

__all__ = ["lenet5", "lenet_300_100"]


@register_model("lenet_300_100")
def lenet_300_100(
    num_classes: int = 10, in_shape: Sequence[int] = (1, 28, 28), hidden: Sequence[int] = (300, 100)
) -> nn.Sequential:
    """LeNet-300-100: a fully-connected net ``in -> 300 -> 100 -> num_classes`` with ReLUs (LeCun et al. 1998).

    Args:
        num_classes: output width.
        in_shape: ``(C, H, W)`` of one input image; it is flattened.
        hidden: hidden widths (default ``(300, 100)``).
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    width = math.prod(in_shape)
    for i, h in enumerate(hidden, start=1):
        layers[f"fc{i}"] = nn.Linear(width, h)
        layers[f"relu{i}"] = nn.ReLU()
        width = h
    layers[f"fc{len(hidden) + 1}"] = nn.Linear(width, num_classes)
    return nn.Sequential(layers)


@register_model("lenet5")
def lenet5(num_classes: int = 10, in_shape: Sequence[int] = (1, 28, 28)) -> nn.Sequential:
    """LeNet-5 with Caffe's layer sizes: conv20(5x5)-pool-conv50(5x5)-pool-fc500-fc.

    ReLUs follow each conv and the first fc, as in the common PyTorch ports used by pruning papers.

    Args:
        num_classes: output width.
        in_shape: ``(C, H, W)`` of one input image.
    """
    c, h, w = in_shape
    fh, fw = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(c, 20, 5),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(20, 50, 5),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(50 * fh * fw, 500),
            relu3=nn.ReLU(),
            fc2=nn.Linear(500, num_classes),
        )
    )
