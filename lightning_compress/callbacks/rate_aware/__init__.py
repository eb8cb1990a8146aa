"""RateAware: train for the file's length, a rate term in the loss and support cuts along a byte path.

The callback (:mod:`.callback`: arguments, the rate term, schedule, guards, resuming) stands on its cuts
(:mod:`.cuts`: the byte path, a cut and its back-off); the estimates and the gradient are in ``functional.rate``.
"""

from lightning_compress.callbacks.rate_aware.callback import RateAware

__all__ = ["RateAware"]
