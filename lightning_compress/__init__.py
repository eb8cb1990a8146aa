"""lightning_compress: Lightning callbacks that compress networks while they train, and a real compressed artifact.

Public API::

    import lightning_compress as lc
    lc.save(model, "model.lcz"); model = lc.load("model.lcz"); lc.size_report("model.lcz").print()
"""

__version__ = "0.1.0"

from lightning_compress.callbacks import (
    ArtifactWriter,
    NeuronElimination,
    SuccessivePruning,
    Ternarization,
    WeightSharing,
)
from lightning_compress.codec import ArtifactError, CodecSpec, load, read_artifact, save
from lightning_compress.models import build_model
from lightning_compress.module import ImageClassifier, param_groups
from lightning_compress.report import SizeReport, size_report

__all__ = [
    "ArtifactError",
    "ArtifactWriter",
    "CodecSpec",
    "ImageClassifier",
    "NeuronElimination",
    "SizeReport",
    "SuccessivePruning",
    "Ternarization",
    "WeightSharing",
    "__version__",
    "build_model",
    "load",
    "param_groups",
    "read_artifact",
    "save",
    "size_report",
]
