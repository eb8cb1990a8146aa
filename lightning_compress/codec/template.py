"""A zoo architecture's tensors, as format 3 reads them instead of writing them: names, shapes, dtypes, roles.

The model a registered builder builds (on ``meta``: no memory) with the arguments a header gives; path arguments
are left out, so a file never makes the reader open another file.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from lightning_compress.codec.base import dtype_name, fp32_nbytes
from lightning_compress.codec.registry import architecture_builder

__all__ = [
    "TemplateTensor",
    "TemplateTooLarge",
    "architecture_template",
    "buildable_kwargs",
    "non_default_kwargs",
    "template_fp32_bytes",
]


@dataclass(frozen=True)
class TemplateTensor:
    """One tensor of the model an architecture builds: what a format-3 record does not repeat."""

    shape: tuple[int, ...]
    dtype: str
    role: str


def architecture_template(architecture: Mapping[str, Any]) -> dict[str, TemplateTensor]:
    """The tensors (in ``state_dict`` order) of the model a header's architecture builds, built on ``meta``.

    Path arguments (``weights_path``, ...) are left out, as :func:`~lightning_compress.load` does: a file never
    makes the reader open another file.

    Raises:
        LookupError: the architecture is not registered.
        ValueError: its arguments do not build it.

    Examples:
        >>> import lightning_compress  # registers the zoo
        >>> list(architecture_template({"name": "lenet_300_100", "kwargs": {"hidden": [8, 4]}}).items())[0]
        ('fc1.weight', TemplateTensor(shape=(8, 784), dtype='float32', role='parameter'))
    """
    name, kwargs = architecture.get("name"), architecture.get("kwargs", {})
    builder = architecture_builder(name) if isinstance(name, str) else None
    if builder is None or not isinstance(kwargs, dict):
        raise LookupError(f"architecture {name!r} is not registered (import the module that registers it).")
    return dict(_template(name, id(builder), json.dumps(buildable_kwargs(kwargs), sort_keys=True)))


def buildable_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """An architecture's arguments without its path arguments (``weights_path``, ...).

    A file never makes the reader open another file.

    Examples:
        >>> buildable_kwargs({"num_classes": 10, "weights_path": "/elsewhere.pt"})
        {'num_classes': 10}
    """
    return {k: v for k, v in kwargs.items() if not str(k).endswith("_path")}


@lru_cache(maxsize=32)  # every trial artifact of a fit asks for the same one
def _template(name: str, builder_id: int, kwargs_json: str) -> tuple[tuple[str, TemplateTensor], ...]:
    builder = architecture_builder(name)
    if builder is None or id(builder) != builder_id:  # re-registered since: the caller asks again
        raise LookupError(f"architecture {name!r} changed while it was built")
    try:
        with torch.device("meta"):
            model = builder(**json.loads(kwargs_json))
        parameters = {n for n, _ in model.named_parameters(remove_duplicate=False)}
        return tuple(
            (n, TemplateTensor(tuple(t.shape), dtype_name(t.dtype), "parameter" if n in parameters else "buffer"))
            for n, t in model.state_dict(keep_vars=True).items()
        )
    except Exception as err:
        raise ValueError(f"does not build {name!r}: {type(err).__name__}: {err}") from err


def template_fp32_bytes(template: Mapping[str, TemplateTensor]) -> int:
    """fp32 bytes of the template's tensors (4 per floating-point value, the native size otherwise)."""
    return sum(fp32_nbytes(math.prod(t.shape), getattr(torch, t.dtype)) for t in template.values())


def non_default_kwargs(name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` without the arguments equal to the builder's defaults (compared as JSON)."""
    builder = architecture_builder(name)
    try:
        parameters = inspect.signature(builder).parameters if builder is not None else {}
    except (TypeError, ValueError):
        return dict(kwargs)
    kept = {}
    for key, value in kwargs.items():
        default = parameters[key].default if key in parameters else inspect.Parameter.empty
        try:
            same = default is not inspect.Parameter.empty and json.dumps(default) == json.dumps(value)
        except (TypeError, ValueError):
            same = False
        if not same:
            kept[key] = value
    return kept


class TemplateTooLarge(ValueError):
    """The architecture a header names builds a model of more values than the reader allows."""

    def __init__(self, elements: int) -> None:
        super().__init__(f"the architecture builds a model of {elements:,} values")
        self.elements = elements
