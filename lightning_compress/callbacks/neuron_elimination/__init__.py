"""NeuronElimination: linearly dependent neurons removed during ``fit``, their contribution redistributed.

The callback (:mod:`.callback`: arguments, schedule, the fit's hooks, resuming) stands on its rounds
(:mod:`.rounds`: a round's decision, redistribution and back-off, the undo and the shrink); the algorithms are in
:mod:`lightning_compress.functional.neuron_elimination`.
"""

from lightning_compress.callbacks.guard import DEFAULT_ACCURACY_BUDGET
from lightning_compress.callbacks.neuron_elimination.callback import DEFAULT_TOLERANCE, NeuronElimination

__all__ = ["DEFAULT_ACCURACY_BUDGET", "DEFAULT_TOLERANCE", "NeuronElimination"]
