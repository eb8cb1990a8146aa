"""Compression events: the stages, rounds, searches and swaps a callback runs between two training steps.

An event is a method marked with :func:`compression_event`: its wall time and calls are counted on the callback
(``event_seconds``, ``event_counts``), it shows in ``torch.profiler`` traces as ``lc/<Callback>/<name>``, and the
memory freed before and by it is handed back to the operating system, so its buffers never lie under the next
step's activations (:mod:`~lightning_compress.callbacks.memory`). :class:`EventBudget` keeps a callback's optional
events (guarded stages and rounds) within a share of the fit's own training steps.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import torch

from lightning_compress.callbacks.memory import release_freed_memory
from lightning_compress.callbacks.randomness import kept_random_state
from lightning_compress.functional.weight_sharing import SearchBudget

__all__ = ["EventBudget", "TimedEvents", "compression_event", "events_run", "progress_bar", "spending"]

#: Compression events run in this process so far (every callback's): a training step during which the count moved
#: held an event, and is not a training step's time.
_EVENTS_RUN = [0]


def events_run() -> int:
    """How many compression events this process has run (every callback's)."""
    return _EVENTS_RUN[0]


_Method = TypeVar("_Method", bound=Callable[..., Any])


class TimedEvents(Protocol):
    """What an object needs for its methods to be compression events."""

    @property
    def owner(self) -> str:
        """The callback's name."""

    event_seconds: dict[str, float]
    event_counts: dict[str, int]
    event_log: deque[tuple[str, float, float]]


def compression_event(name: str) -> Callable[[_Method], _Method]:
    """Mark a callback method as a compression event (a stage, an elimination round, the search, ...).

    Its wall time is added to ``callback.event_seconds[name]`` and it shows in ``torch.profiler`` traces as
    ``lc/<Callback>/<name>``, so a fit's overhead splits into per-step work and events (``bench.overhead``). The
    random states it draws from are put back afterwards (:func:`~.randomness.kept_random_state`).

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
            _EVENTS_RUN[0] += 1
            with torch.profiler.record_function(f"lc/{self.owner}/{name}"):
                # the last step's activations, freed but still resident, must not lie under the event's buffers
                release_freed_memory()
                try:
                    with kept_random_state():  # the fit draws its shuffles and dropout masks as it would without it
                        return method(self, *args, **kwargs)
                finally:
                    release_freed_memory()  # the event's working buffers must not stay resident under the next step
                    ended = time.perf_counter()
                    self.event_seconds[name] = self.event_seconds.get(name, 0.0) + ended - started
                    self.event_counts[name] = self.event_counts.get(name, 0) + 1
                    log = getattr(self, "event_log", None)
                    if log is not None:  # a timeline: bench.scale reads each event's memory peak within its span
                        log.append((name, started, ended))

        return timed  # type: ignore[return-value]

    return wrap


class EventBudget:
    """How much of a fit one callback's optional events may take, in the fit's own training steps.

    The budget is ``max(steps, fraction x the fit's steps)`` training steps, timed as this fit's steps are (the median
    of the latest steps that held no event), and never less than ``min_seconds`` (a few seconds of events are no
    burden, also where a short fit of a small model makes them many steps). Before an optional event (a guarded
    stage or round: one the schedule can merge into a later one), :meth:`decide` compares what the callback's events
    have spent, and what one more such event costs (the dearest of the earlier ones), with what is left. Events that
    must run (the final stream, a shrink, the end of the fit's BatchNorm re-estimation) are counted, never refused.

    Args:
        steps: the budget in training steps, whatever the fit's length (60: the events that must run, the final
            stream and the BatchNorm re-estimations, take 10-15 more on ResNet-50, and the steps right after an
            event, which the budget is timed in, are slower than a dense fit's: a callback's events then stay
            within 100 of the dense fit's steps, ``bench.scale``).
        fraction: the budget as a share of the fit's steps, where that is more.
        min_seconds: the budget in seconds, where that is more.

    Examples:
        >>> budget = EventBudget(steps=100, min_seconds=0)  # 100 steps of 2 s: 200 s
        >>> for _ in range(3):
        ...     budget.step_started()
        ...     budget.step_ended(seconds=2.0)
        >>> budget.decide(spent=150.0, each=20.0, remaining=4, total_steps=16)  # 50 s left, 25 s each: 2 of 4
        'skip'
        >>> budget.decide(spent=150.0, each=20.0, remaining=3, total_steps=16)
        'run'
        >>> budget.decide(spent=190.0, each=20.0, remaining=1, total_steps=16)  # 10 s left
        'stop'
        >>> budget.decide(spent=150.0, each=20.0, remaining=3, total_steps=16, latest=True)  # the last 2 of 3 run
        'skip'
    """

    def __init__(
        self, steps: float = 60.0, fraction: float = 0.25, min_seconds: float = 10.0, window: int = 32
    ) -> None:
        self.steps, self.fraction, self.min_seconds = steps, fraction, min_seconds
        self._times: deque[float] = deque(maxlen=window)
        self._started: float | None = None
        self._events_at_start = 0

    def step_started(self) -> None:
        """A training step begins (``on_train_batch_start``)."""
        self._started = time.perf_counter()
        self._events_at_start = events_run()

    def step_ended(self, seconds: float | None = None) -> None:
        """A training step ends (``on_train_batch_end``, before any event): timed unless an event ran in it."""
        if self._started is None:
            return
        elapsed = time.perf_counter() - self._started if seconds is None else seconds
        if events_run() == self._events_at_start:
            self._times.append(elapsed)
        self._started = None

    @property
    def step_seconds(self) -> float | None:
        """The median training step of this fit so far (``None`` before one was timed)."""
        return statistics.median(self._times) if self._times else None

    def budget_steps(self, total_steps: int) -> float:
        """The budget in training steps of a fit of ``total_steps``."""
        return max(self.steps, self.fraction * total_steps)

    def limit_seconds(self, total_steps: int) -> float | None:
        """The budget in seconds (``None`` while no step has been timed)."""
        step = self.step_seconds
        return None if step is None else max(self.min_seconds, step * self.budget_steps(total_steps))

    def decide(self, spent: float, each: float | None, remaining: int, total_steps: int, latest: bool = False) -> str:
        """``"run"`` the next optional event, ``"skip"`` it (a later one takes its place) or ``"stop"`` (none fits).

        Args:
            spent: seconds the callback's events have taken in this fit.
            each: the seconds one such event takes (the callbacks pass the dearest so far; ``None``: none ran yet,
                it runs).
            remaining: optional events left in the schedule, this one included.
            total_steps: the fit's training steps.
            latest: the affordable events are the schedule's last ones, not spread over it (a schedule whose later
                event does what the earlier ones do and more: NeuronElimination's rising tolerances).
        """
        limit = self.limit_seconds(total_steps)
        if each is None or limit is None or remaining <= 0:
            return "run"
        # priced a quarter above the dearest so far: the next of a schedule is larger (a larger step, more to undo)
        affordable = int((limit - spent) // max(1.25 * each, 1e-9))
        if affordable >= remaining:
            return "run"
        if affordable <= 0:
            return "stop"
        if latest:
            return "skip"
        # the affordable ones spread over what is left, counted back from the last of the schedule, which always runs
        stride = -(-remaining // affordable)
        return "run" if (remaining - 1) % stride == 0 else "skip"

    def decide_for(
        self, events: TimedEvents, event: str, remaining: int, total_steps: int, latest: bool = False
    ) -> str:
        """:meth:`decide` for a callback's next optional ``event``, priced at the dearest of its kind so far.

        The dearest, not the mean: later events are larger (they back off more, their size goal grows), and the mean
        of the early cheap ones would let one too many start.
        """
        spans = [end - start for name, start, end in events.event_log if name == event]
        each = max(spans) if spans else None
        return self.decide(sum(events.event_seconds.values()), each, remaining, total_steps, latest)

    def spent_reason(self, events: TimedEvents, event: str, total_steps: int) -> str:
        """Why the events stopped when the budget ended, in words (the callback's closing line)."""
        step = self.step_seconds or 0.0
        limit = self.limit_seconds(total_steps) or 0.0
        floor = f", at least {self.min_seconds:g} s" if self.min_seconds > 0 else ""
        return (
            f"its events took {sum(events.event_seconds.values()):.1f} s of their {limit:.1f}-s budget "
            f"({self.budget_steps(total_steps):.0f} "
            f"training steps at this fit's {step:.3f} s a step{floor}), and one more {event} would not fit"
        )


def progress_bar(description: str, total: int, enabled: bool, status: Callable[[], str] = lambda: "") -> Any:
    """A rich progress bar over a long event's ``total`` steps: a context giving ``advance(done)`` (``None`` if off).

    ``status()`` is appended to the description at every update (e.g. what a budget has spent).
    """

    @contextmanager
    def bar() -> Any:
        if not enabled:
            yield None
            return
        from rich.progress import Progress

        with Progress(transient=True) as progress:
            task = progress.add_task(description, total=total)
            yield lambda done: progress.update(task, completed=done, description=f"{description}{status()}")

    return bar()


def spending(budget: SearchBudget | None, started: float) -> Callable[[], str]:
    """What a search has spent, for its progress bar: passes of the budget and the seconds one pass takes."""

    def status() -> str:
        if budget is None or budget.spent <= 0:
            return ""
        per_pass = (time.perf_counter() - started) / budget.spent
        return f" ({budget.spent:.1f} of {budget.total:g} passes, {per_pass:.2f} s a pass)"

    return status
