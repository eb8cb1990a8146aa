"""Which tensors a compression method works on."""

from __future__ import annotations

from torch import nn

__all__ = ["select_parameters"]


def select_parameters(module: nn.Module, which: str = "all") -> list[tuple[str, nn.Parameter]]:
    """Tensors a method compresses, in ``named_parameters`` order.

    Args:
        module: the network.
        which: ``"all"`` (every parameter, as the paper's experiments) or ``"weights"`` (Conv/Linear weights only;
            biases and normalisation parameters stay fp32).

    Raises:
        ValueError: for another ``which`` or when nothing is selected.
    """
    if which not in ("all", "weights"):
        raise ValueError(f"`parameters` must be 'all' or 'weights', got {which!r}.")
    if which == "all":
        chosen = [(n, p) for n, p in module.named_parameters() if p.is_floating_point()]
    else:
        chosen = []
        for mod_name, mod in module.named_modules():
            if isinstance(mod, nn.Linear | nn.modules.conv._ConvNd) and isinstance(mod.weight, nn.Parameter):
                chosen.append((f"{mod_name}.weight" if mod_name else "weight", mod.weight))
    if not chosen:
        raise ValueError(f"No parameters selected with parameters={which!r}.")
    return chosen
