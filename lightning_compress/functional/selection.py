"""Which tensors a compression method works on."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["select_parameters"]


def select_parameters(module: nn.Module, which: str | Sequence[str] = "all") -> list[tuple[str, nn.Parameter]]:
    """Tensors a method compresses, in ``named_parameters`` order.

    Args:
        module: the network.
        which: ``"all"`` (every parameter, as the paper's experiments), ``"weights"`` (Conv/Linear weights only;
            biases and normalisation parameters stay fp32), or a list of parameter names or module names (a module
            name selects its parameters): how two methods split a network between them.

    Raises:
        ValueError: for another ``which`` or when nothing is selected.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> [n for n, _ in select_parameters(net, ["0", "2.bias"])]
        ['0.weight', '0.bias', '2.bias']
    """
    if not isinstance(which, str):
        wanted = list(which)
        params = list(module.named_parameters())
        unknown = [w for w in wanted if not any(n == w or n.startswith(f"{w}.") for n, _ in params)]
        if unknown:
            raise ValueError(
                f"`parameters` names {unknown}, which are neither parameters nor modules with parameters of the model; "
                f"its parameters: {[n for n, _ in params][:12]}{' ...' if len(params) > 12 else ''}."
            )
        return [(n, p) for n, p in params if any(n == w or n.startswith(f"{w}.") for w in wanted)]
    if which not in ("all", "weights"):
        raise ValueError(f"`parameters` must be 'all', 'weights' or a list of names, got {which!r}.")
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
