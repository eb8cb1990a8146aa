"""Ternarization: weights (and optionally activations) in {0, +-1} x scale during ``fit`` (Gu et al. 2022/24).

The callback (:mod:`.callback`: arguments, the ``ntk`` mode, the bake, figures, resuming) stands on its swap
(:mod:`.swap`: the ``qat`` layers and step activations); the matching is in ``functional.ternarization`` and
``models.random_features``, the layers in ``layers``.
"""

from lightning_compress.callbacks.ternarization.callback import Ternarization

__all__ = ["Ternarization"]
