"""SuccessivePruning: SuRP's stages of successive refinement during ``fit``, and its entropy-coded stream.

The callback (:mod:`.callback`: arguments, schedule, guards, resuming) stands on its stages (:mod:`.stages`: a stage's
refinement and back-off, the final stream and its plan); the algorithms are in
:mod:`lightning_compress.functional.successive_pruning`, the stream's format in :mod:`lightning_compress.codec.surp`.
"""

from lightning_compress.callbacks.successive_pruning.callback import DEFAULT_TARGET_SPARSITY, SuccessivePruning

__all__ = ["DEFAULT_TARGET_SPARSITY", "SuccessivePruning"]
