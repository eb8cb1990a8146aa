"""lightning_compress: Lightning callbacks that compress networks while they train, and a real compressed artifact.

Public API::

    import lightning_compress as lc
    lc.save(model, "model.lcz"); model = lc.load("model.lcz"); lc.size_report("model.lcz").print()

The names below are imported on first use (PEP 562), so ``import lightning_compress.codec`` reads and writes
artifacts (``lightning_compress.saving`` saves and loads models) without importing Lightning, torchvision or
torch-pruning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # also codec.base.LIBRARY_VERSION (written into artifacts); a test keeps them equal

if TYPE_CHECKING:
    from lightning_compress.callbacks import (
        ArtifactWriter,
        Distillation,
        NeuronElimination,
        RateAware,
        SuccessivePruning,
        Ternarization,
        WeightSharing,
    )
    from lightning_compress.callbacks.plan import FitPlan, plan
    from lightning_compress.codec import ArtifactError, CodecSpec, read_artifact
    from lightning_compress.models import build_model
    from lightning_compress.module import ImageClassifier, param_groups
    from lightning_compress.report import SizeReport, size_report
    from lightning_compress.saving import load, save

#: Public name -> the module that defines it.
_PUBLIC = {
    "ArtifactWriter": "lightning_compress.callbacks",
    "Distillation": "lightning_compress.callbacks",
    "NeuronElimination": "lightning_compress.callbacks",
    "RateAware": "lightning_compress.callbacks",
    "SuccessivePruning": "lightning_compress.callbacks",
    "Ternarization": "lightning_compress.callbacks",
    "WeightSharing": "lightning_compress.callbacks",
    "FitPlan": "lightning_compress.callbacks.plan",
    "plan": "lightning_compress.callbacks.plan",
    "ArtifactError": "lightning_compress.codec",
    "CodecSpec": "lightning_compress.codec",
    "load": "lightning_compress.saving",
    "read_artifact": "lightning_compress.codec",
    "save": "lightning_compress.saving",
    "build_model": "lightning_compress.models",
    "ImageClassifier": "lightning_compress.module",
    "param_groups": "lightning_compress.module",
    "SizeReport": "lightning_compress.report",
    "size_report": "lightning_compress.report",
}
#: Public names that read artifacts.
_READERS = frozenset({"load", "read_artifact", "size_report", "SizeReport"})
#: Subpackages reachable as attributes (``lc.module.evaluate_accuracy``), imported on first use too.
_SUBMODULES = (
    "arguments",
    "callbacks",
    "cli",
    "codec",
    "data",
    "functional",
    "layers",
    "models",
    "module",
    "report",
    "representation",
    "saving",
    "surgery",
    "sweep",
)

__all__ = [
    "ArtifactError",
    "ArtifactWriter",
    "CodecSpec",
    "Distillation",
    "FitPlan",
    "ImageClassifier",
    "NeuronElimination",
    "RateAware",
    "SizeReport",
    "SuccessivePruning",
    "Ternarization",
    "WeightSharing",
    "__version__",
    "build_model",
    "load",
    "param_groups",
    "plan",
    "read_artifact",
    "save",
    "size_report",
]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        if name in _READERS:  # a zoo model's file names its tensors by the architecture: the zoo must be registered
            importlib.import_module("lightning_compress.models")
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"lightning_compress.{name}")
    raise AttributeError(f"module 'lightning_compress' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, *_SUBMODULES])


assert set(__all__) == {"__version__", *_PUBLIC}  # noqa: S101 - the two lists name the same API
