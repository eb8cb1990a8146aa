"""Model surgery the artifact's shapes call for: a module's tensors given the (smaller) shapes of a state dict.

Structural compression makes layers smaller; a fresh model, a resumed fit and the loader all need the model resized
to the stored shapes before its tensors are loaded. Below the callbacks and the loader, above nothing but torch.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["resize_to_state"]


def resize_to_state(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Give every parameter/buffer of ``module`` the shape it has in ``state`` (for structurally pruned layers).

    Layers' shape attributes (``in_features``, ``out_channels``, ``groups`` of a depthwise convolution,
    ``num_features``) follow. Names ``module`` does not have are left for ``load_state_dict`` to report.

    Examples:
        >>> net = torch.nn.Linear(4, 3)
        >>> resize_to_state(net, {"weight": torch.empty(2, 4, device="meta"), "bias": torch.empty(2)})
        >>> net.out_features, tuple(net.weight.shape)
        (2, (2, 4))
    """
    for name, tensor in state.items():
        owner_name, _, attr = name.rpartition(".")
        try:
            owner = module.get_submodule(owner_name) if owner_name else module
        except AttributeError:
            continue  # load_state_dict reports unexpected keys
        current = owner._parameters.get(attr, owner._buffers.get(attr))
        if current is None or current.shape == tensor.shape:
            continue
        # a shape alone (a meta tensor, from a header) takes the current tensor's device
        device = current.device if tensor.is_meta else tensor.device
        fresh = torch.empty(tensor.shape, dtype=tensor.dtype, device=device)
        if attr in owner._parameters:
            # registered, not written into the dict: holders of the old parameter learn of it (registration hooks)
            owner.register_parameter(attr, nn.Parameter(fresh, requires_grad=current.requires_grad))
        else:
            owner._buffers[attr] = fresh
        _sync_shape_attributes(owner)


def _sync_shape_attributes(layer: nn.Module) -> None:
    weight = getattr(layer, "weight", None)
    if isinstance(layer, nn.Linear) and weight is not None:
        layer.out_features, layer.in_features = weight.shape
    elif isinstance(layer, nn.modules.conv._ConvNd) and weight is not None:
        depthwise = layer.groups > 1 and layer.groups == layer.out_channels and weight.shape[1] == 1
        layer.out_channels = weight.shape[0]
        if depthwise:  # one filter per channel: as many groups as channels remain
            layer.groups = weight.shape[0]
        layer.in_channels = weight.shape[1] * layer.groups
    elif isinstance(layer, nn.modules.batchnorm._NormBase):
        ref = weight if weight is not None else layer.running_mean
        if ref is not None:
            layer.num_features = ref.shape[0]
