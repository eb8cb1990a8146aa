"""Lightning callbacks, one per compression method, the artifact writer and distillation."""

from lightning_compress.callbacks.artifact import ArtifactWriter
from lightning_compress.callbacks.base import CompressionCallback
from lightning_compress.callbacks.distillation import Distillation
from lightning_compress.callbacks.neuron_elimination import NeuronElimination
from lightning_compress.callbacks.rate_aware import RateAware
from lightning_compress.callbacks.successive_pruning import SuccessivePruning
from lightning_compress.callbacks.ternarization import Ternarization
from lightning_compress.callbacks.weight_sharing import WeightSharing

__all__ = [
    "ArtifactWriter",
    "CompressionCallback",
    "Distillation",
    "NeuronElimination",
    "RateAware",
    "SuccessivePruning",
    "Ternarization",
    "WeightSharing",
]
