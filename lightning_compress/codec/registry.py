"""The names a header may give: architectures the loader rebuilds and module types a method inserts into a network.

The model zoo and the layers register themselves here, so the registries point down and the file format never
imports the zoo or the layers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

__all__ = [
    "architecture_builder",
    "known_architectures",
    "known_module_types",
    "module_type",
    "register_architecture",
    "register_module_type",
]

#: Modules a compression method puts into a network (e.g. step activations), by type name, so that ``load`` can put
#: them into a freshly built model before filling it.
_MODULE_TYPES: dict[str, type[nn.Module]] = {}
#: Architectures ``load`` rebuilds by name.
_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}
_M = TypeVar("_M", bound=type[nn.Module])


def register_architecture(name: str, builder: Callable[..., nn.Module]) -> None:
    """Let :func:`~lightning_compress.load` rebuild artifacts whose header names architecture ``name``."""
    _ARCHITECTURES[name] = builder


def register_module_type(name: str) -> Callable[[_M], _M]:
    """Register a module class that artifacts record by ``name`` and :func:`~lightning_compress.load` rebuilds.

    The class must offer ``lc_module_kwargs() -> dict`` (JSON-able constructor arguments); its tensors are in the
    state dict as usual.

    Examples:
        >>> from lightning_compress.layers import StepActivation
        >>> module_type(StepActivation.lc_module_type) is StepActivation
        True
    """

    def decorator(cls: _M) -> _M:
        _MODULE_TYPES[name] = cls
        cls.lc_module_type = name  # type: ignore[attr-defined]
        return cls

    return decorator


def module_type(name: str) -> type[nn.Module] | None:
    """The registered module class called ``name`` (``None``: unknown)."""
    return _MODULE_TYPES.get(name)


def known_module_types() -> list[str]:
    """The registered module type names, sorted."""
    return sorted(_MODULE_TYPES)


def architecture_builder(name: str) -> Callable[..., nn.Module] | None:
    """The builder registered for architecture ``name`` (``None``: unknown)."""
    return _ARCHITECTURES.get(name)


def known_architectures() -> list[str]:
    """The registered architecture names, sorted."""
    return sorted(_ARCHITECTURES)
