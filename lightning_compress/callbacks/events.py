"""Compression events: the stages, rounds, searches and swaps a callback runs between two training steps.

An event is a method marked with :func:`compression_event`: its wall time and calls are counted on the callback
(``event_seconds``, ``event_counts``), it shows in ``torch.profiler`` traces as ``lc/<Callback>/<name>``, and the
memory freed before and by it is handed back to the operating system, so its buffers never lie under the next
step's activations (:mod:`~lightning_compress.callbacks.memory`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import torch

from lightning_compress.callbacks.memory import release_freed_memory

__all__ = ["TimedEvents", "compression_event"]

_Method = TypeVar("_Method", bound=Callable[..., Any])


class TimedEvents(Protocol):
    """What an object needs for its methods to be compression events."""

    @property
    def owner(self) -> str:
        """The callback's name."""

    event_seconds: dict[str, float]
    event_counts: dict[str, int]


def compression_event(name: str) -> Callable[[_Method], _Method]:
    """Mark a callback method as a compression event (a stage, an elimination round, the search, ...).

    Its wall time is added to ``callback.event_seconds[name]`` and it shows in ``torch.profiler`` traces as
    ``lc/<Callback>/<name>``, so a fit's overhead splits into per-step work and events (``bench.overhead``).

    Examples:
        >>> from lightning_compress.callbacks.base import CompressionCallback
        >>> class Demo(CompressionCallback):
        ...     @compression_event("stage")
        ...     def stage(self) -> int:
        ...         return 1
        >>> cb = Demo()
        >>> cb.stage(), sorted(cb.event_seconds), cb.event_counts["stage"]
        (1, ['stage'], 1)
    """

    def wrap(method: _Method) -> _Method:
        @functools.wraps(method)
        def timed(self: TimedEvents, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            with torch.profiler.record_function(f"lc/{self.owner}/{name}"):
                # the last step's activations, freed but still resident, must not lie under the event's buffers
                release_freed_memory()
                try:
                    return method(self, *args, **kwargs)
                finally:
                    release_freed_memory()  # the event's working buffers must not stay resident under the next step
                    self.event_seconds[name] = self.event_seconds.get(name, 0.0) + time.perf_counter() - started
                    self.event_counts[name] = self.event_counts.get(name, 0) + 1

        return timed  # type: ignore[return-value]

    return wrap
