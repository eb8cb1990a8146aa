"""Model zoo registry: builders by name, and the spec that lets an artifact rebuild its architecture."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from torch import nn

from lightning_compress.codec.registry import register_architecture

__all__ = ["available_models", "build_model", "register_model"]

_Builder = TypeVar("_Builder", bound=Callable[..., nn.Module])
_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[_Builder], _Builder]:
    """Register a builder function under ``name`` (used as ``build_model(name, ...)`` and in ``conf/model``)."""

    def decorator(fn: _Builder) -> _Builder:
        if name in _MODELS:
            raise ValueError(f"Model name {name!r} is already registered.")
        _MODELS[name] = fn
        register_architecture(name, fn)  # artifacts naming this model load without the container importing the zoo
        return fn

    return decorator


def available_models() -> list[str]:
    """Names of all zoo models, sorted."""
    return sorted(_MODELS)


def _plain(value: Any) -> Any:
    """Hydra containers and tuples -> JSON-able lists/dicts, so the spec can go into an artifact header."""
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Sequence):
        return [_plain(v) for v in value]
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    raise TypeError(f"Model argument {value!r} of type {type(value).__name__} cannot be recorded in an artifact.")


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the zoo model ``name`` and record ``(name, kwargs)`` on it as ``lc_spec``.

    Args:
        name: one of :func:`available_models`.
        **kwargs: passed to the builder (``num_classes``, ``in_shape``, ``weights_path``, ...).

    Raises:
        ValueError: naming the unknown model and listing the zoo.

    Examples:
        >>> from lightning_compress.models import build_model
        >>> net = build_model("lenet_300_100", num_classes=10, in_shape=(1, 28, 28))
        >>> sum(p.numel() for p in net.parameters()), net.lc_spec["name"]
        (266610, 'lenet_300_100')
    """
    if name not in _MODELS:
        raise ValueError(f"Unknown model {name!r}; the zoo has: {available_models()}.")
    kwargs = {k: _plain(v) for k, v in kwargs.items()}
    model = _MODELS[name](**kwargs)
    # Plain attribute (not a buffer/parameter): survives deepcopy, ignored by state_dict.
    object.__setattr__(model, "lc_spec", {"name": name, "kwargs": kwargs})
    return model
