"""Model zoo. Every model is built by name with :func:`build_model`, which records how to rebuild it."""

from lightning_compress.models import cifar, imagenet, random_features, small
from lightning_compress.models.registry import available_models, build_model, register_model

__all__ = ["available_models", "build_model", "cifar", "imagenet", "random_features", "register_model", "small"]
