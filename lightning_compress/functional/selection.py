"""Which tensors a compression method works on."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["frozen_parameters", "select_parameters", "tied_parameters"]


def tied_parameters(module: nn.Module) -> list[str]:
    """Every name of every parameter that stands under more than one name (tied weights).

    Examples:
        >>> net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
        >>> net[1].weight = net[0].weight
        >>> tied_parameters(net)
        ['0.weight', '1.weight']
    """
    names: dict[int, list[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return [n for group in names.values() if len(group) > 1 for n in group]


def frozen_parameters(module: nn.Module) -> list[str]:
    """Names of the parameters that do not train (``requires_grad=False``): every method leaves them alone.

    Examples:
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
        >>> _ = net[0].requires_grad_(False)
        >>> frozen_parameters(net)
        ['0.weight', '0.bias']
    """
    return [n for n, p in module.named_parameters() if not p.requires_grad]


def select_parameters(module: nn.Module, which: str | Sequence[str] = "all") -> list[tuple[str, nn.Parameter]]:
    """Tensors a method compresses, in ``named_parameters`` order.

    Args:
        module: the network.
        which: ``"all"`` (every parameter, as the paper's experiments), ``"weights"`` (Conv/Linear weights only;
            biases and normalisation parameters stay fp32), or a list of parameter names or module names (a module
            name selects its parameters): how two methods split a network between them. ``"all"`` and
            ``"weights"`` leave frozen parameters (``requires_grad=False``) out; a list takes what it names. A tied
            parameter is selected once, under the first of its names, whichever of them the list gives.

    Raises:
        ValueError: for another ``which`` or when nothing is selected.

    Examples:
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> [n for n, _ in select_parameters(net, ["0", "2.bias"])]
        ['0.weight', '0.bias', '2.bias']
    """
    if not isinstance(which, str):
        wanted = list(which)
        every = list(module.named_parameters(remove_duplicate=False))  # aliases of tied parameters too
        unknown = [w for w in wanted if not any(n == w or n.startswith(f"{w}.") for n, _ in every)]
        if unknown:
            raise ValueError(
                f"`parameters` names {unknown}, which are neither parameters nor modules with parameters of the model; "
                f"its parameters: {[n for n, _ in every][:12]}{' ...' if len(every) > 12 else ''}."
            )
        first = {id(p): n for n, p in reversed(list(module.named_parameters()))}
        picked = {id(p) for n, p in every if any(n == w or n.startswith(f"{w}.") for w in wanted)}
        return [(first[id(p)], p) for n, p in module.named_parameters() if id(p) in picked]
    if which not in ("all", "weights"):
        raise ValueError(f"`parameters` must be 'all', 'weights' or a list of names, got {which!r}.")
    if which == "all":
        chosen = [(n, p) for n, p in module.named_parameters() if p.is_floating_point() and p.requires_grad]
    else:
        chosen = []
        canonical = {id(p): n for n, p in module.named_parameters()}
        for mod in module.modules():
            weight = getattr(mod, "weight", None)
            if not (isinstance(mod, nn.Linear | nn.modules.conv._ConvNd) and isinstance(weight, nn.Parameter)):
                continue
            if weight.requires_grad and all(weight is not p for _, p in chosen):
                chosen.append((canonical[id(weight)], weight))
    if not chosen:
        frozen = " (every candidate is frozen: requires_grad=False)" if frozen_parameters(module) else ""
        raise ValueError(f"No parameters selected with parameters={which!r}{frozen}.")
    return chosen
