"""Calling a network on calibration data: a batch becomes the forward's arguments.

A compression method that calibrates (NeuronElimination's statistics, Ternarization's input scales) runs the
network on training batches. Most models take one tensor, the first element of an ``(inputs, targets)`` batch;
language models and other multi-input models take several. A *forward-inputs function* maps one batch to the
forward's arguments: a tensor (one positional argument), a tuple (positional arguments) or a dict (keyword
arguments).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["ForwardInputs", "call_forward", "default_forward_inputs", "leading", "to_device"]

#: A function from one batch to the forward's arguments (tensor, tuple of positional arguments, or dict).
ForwardInputs = Callable[[Any], Any]


def default_forward_inputs(batch: Any) -> Any:
    """The first element of a tuple/list batch, or the batch itself when it is a tensor.

    Raises:
        TypeError: for any other batch (a dict, say): pass a forward-inputs function instead.

    Examples:
        >>> x, y = torch.zeros(2, 3), torch.zeros(2)
        >>> default_forward_inputs((x, y)) is x
        True
    """
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, list | tuple) and batch:
        return batch[0]
    raise TypeError(
        f"cannot tell the model's inputs in a batch of type {type(batch).__name__}; give a function from a batch to "
        "the forward's arguments"
    )


def to_device(inputs: Any, device: torch.device) -> Any:
    """``inputs`` (tensor, tuple, list or dict of them, nested) with every tensor moved to ``device``."""
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, Mapping):
        return {k: to_device(v, device) for k, v in inputs.items()}
    if isinstance(inputs, list | tuple):
        return type(inputs)(to_device(v, device) for v in inputs)
    return inputs


def leading(inputs: Any, n: int) -> Any:
    """The first ``n`` samples of every tensor in ``inputs`` (for a cheap trace of the network).

    Examples:
        >>> leading({"ids": torch.arange(10).reshape(5, 2)}, 2)["ids"].shape
        torch.Size([2, 2])
    """
    if isinstance(inputs, torch.Tensor):
        return inputs[:n] if inputs.dim() else inputs
    if isinstance(inputs, Mapping):
        return {k: leading(v, n) for k, v in inputs.items()}
    if isinstance(inputs, list | tuple):
        return type(inputs)(leading(v, n) for v in inputs)
    return inputs


def call_forward(module: nn.Module, inputs: Any) -> Any:
    """``module(inputs)``, ``module(*inputs)`` or ``module(**inputs)`` for a tensor, a tuple or a dict.

    Examples:
        >>> call_forward(nn.Bilinear(2, 3, 1), (torch.zeros(4, 2), torch.zeros(4, 3))).shape
        torch.Size([4, 1])
    """
    if isinstance(inputs, Mapping):
        return module(**inputs)
    if isinstance(inputs, tuple):
        return module(*inputs)
    return module(inputs)
