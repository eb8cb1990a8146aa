"""The fit plan: which compression callbacks act in a fit, in what order, in which windows, with what guard.

Built once per fit, by the first compression callback's ``setup`` (the *leader*, which then runs every callback's
per-step actions in aspect order), and shared by all of them: no callback writes into another. A user sees it
before training with :func:`plan`, and every fit logs it at its start.

Windows are fractions ``[start, end]`` of the fit's optimizer steps. Without explicit windows several callbacks get
consecutive ones in the order structure, support, values (:func:`default_windows`); explicit windows keep the
defaults of the others around them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import lightning.pytorch as pl
from lightning.pytorch.trainer.states import TrainerFn
from rich.console import Console
from rich.table import Table

from lightning_compress.representation import ASPECTS, CompositionError, Representation

__all__ = [
    "FitPlan",
    "PlanEntry",
    "Planned",
    "compression_callbacks",
    "default_windows",
    "plan",
    "should_skip",
    "spread_steps",
]


class Planned(Protocol):
    """What the plan needs of a compression callback."""

    ASPECT: ClassVar[str]
    DEFAULT_WINDOW: ClassVar[tuple[float, float]]

    @property
    def owner(self) -> str:
        """The callback's name."""

    def explicit_window(self, trainer: pl.Trainer | None) -> tuple[float, float] | None:
        """The window its arguments ask for (``None``: the defaults decide)."""

    def planned_events(self, window: tuple[float, float], steps: tuple[int, int] | None) -> str:
        """What it will do inside ``window`` (fractions; ``steps`` when the fit's length is known)."""

    def guard_summary(self) -> str:
        """What guards its accuracy, in a few words."""


def spread_steps(first: int, last: int, count: int, final_fraction: float) -> list[int]:
    """``count`` evenly spaced steps over the first ``1 - final_fraction`` of ``[first, last]`` (the last at its end).

    Never past ``last``: a window shorter than ``count`` steps acts several times at one step.

    Examples:
        >>> spread_steps(0, 100, 4, 0.2)
        [20, 40, 60, 80]
    """
    span = max(round((last - first) * (1.0 - final_fraction)), min(count, last - first))
    return [min(last, first + max(1, round(span * (i + 1) / count))) for i in range(count)]


def should_skip(trainer: pl.Trainer) -> bool:
    """No compression during the sanity check, outside ``fit`` or under ``fast_dev_run``."""
    fast_dev_run = getattr(trainer, "fast_dev_run", False)
    return bool(trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or fast_dev_run)


def compression_callbacks(trainer: pl.Trainer) -> list[Any]:
    """The trainer's compression callbacks, in the order it holds them (``LC_COMPRESSION`` marks them)."""
    return [cb for cb in trainer.callbacks if getattr(cb, "LC_COMPRESSION", False)]  # type: ignore[attr-defined]


def default_windows(
    callbacks: Iterable[Planned], span: tuple[float, float] = (0.0, 1.0), alone: bool = True
) -> dict[int, tuple[float, float]]:
    """Consecutive windows for callbacks given without ``start``/``end``, in the order structure, support, values.

    One callback keeps its own default (``DEFAULT_WINDOW``). Several split the fit into equal consecutive phases,
    one per aspect that trains (structure, support, trained values); a method that acts once at the end
    (``DEFAULT_WINDOW == (1.0, 1.0)``, WeightSharing) stays there. Each method keeps its own fine-tuning share inside
    its window (``final_fraction``). ``span``: the part of the fit they share (the rest is taken by callbacks given
    explicit windows; ``alone=False`` then, and a single callback takes the span too).

    Returns:
        ``id(callback)`` -> ``(start, end)``.

    Examples:
        >>> from lightning_compress import NeuronElimination, SuccessivePruning, WeightSharing
        >>> cbs = [WeightSharing(), SuccessivePruning(), NeuronElimination()]
        >>> sorted(default_windows(cbs).values())
        [(0.0, 0.5), (0.5, 1.0), (1.0, 1.0)]
    """
    callbacks = list(callbacks)
    if len(callbacks) == 1 and alone:
        return {id(callbacks[0]): callbacks[0].DEFAULT_WINDOW}
    at_end = [cb for cb in callbacks if cb.DEFAULT_WINDOW == (1.0, 1.0)]
    training = [cb for cb in callbacks if cb not in at_end]
    phases = sorted({cb.ASPECT for cb in training}, key=ASPECTS.index)
    windows = {id(cb): (1.0, 1.0) for cb in at_end}
    lo, hi = span
    for cb in training:
        i = phases.index(cb.ASPECT)
        windows[id(cb)] = (lo + (hi - lo) * i / len(phases), lo + (hi - lo) * (i + 1) / len(phases))
    return windows


def resolve_windows(callbacks: Sequence[Planned], trainer: pl.Trainer | None = None) -> dict[int, tuple[float, float]]:
    """Every callback's window: explicit ones as given, the others' defaults in the part of the fit left to them."""
    explicit = {id(cb): cb.explicit_window(trainer) for cb in callbacks}
    implicit = [cb for cb in callbacks if explicit[id(cb)] is None]
    given = [(cb, w) for cb in callbacks if (w := explicit[id(cb)]) is not None]
    # the callbacks without a window share, in aspect order, the part of the fit the explicit ones leave
    lo, hi = 0.0, 1.0
    if implicit and given:
        first = min(ASPECTS.index(cb.ASPECT) for cb in implicit)
        last = max(ASPECTS.index(cb.ASPECT) for cb in implicit)
        lo = max([w[1] for cb, w in given if ASPECTS.index(cb.ASPECT) < first and w[1] < 1.0], default=0.0)
        hi = min([w[0] for cb, w in given if ASPECTS.index(cb.ASPECT) > last and w[0] > lo], default=1.0)
    defaults = default_windows(implicit, span=(lo, hi), alone=not given)
    return {id(cb): explicit[id(cb)] or defaults.get(id(cb)) or cb.DEFAULT_WINDOW for cb in callbacks}


@dataclass
class PlanEntry:
    """One compression callback in the plan."""

    callback: Any
    window: tuple[float, float]

    @property
    def owner(self) -> str:
        """The callback's name."""
        return str(self.callback.owner)

    @property
    def aspect(self) -> str:
        """The aspect of a tensor it decides."""
        return str(self.callback.ASPECT)


@dataclass
class FitPlan:
    """The compression callbacks of one fit, in aspect order, with their windows.

    Attributes:
        entries: one per callback, in aspect order (structure, support, values), stable.
        leader: the callback that runs everyone's per-step actions (the first in ``Trainer(callbacks=...)``).
        total_steps: the fit's optimizer steps (0 until the fit starts, unless known from ``max_steps``).
        max_epochs: the fit's epochs (``None``: not known), for the windows in epochs.

    Examples:
        >>> from lightning_compress import SuccessivePruning, WeightSharing
        >>> surp, ws = SuccessivePruning(), WeightSharing()
        >>> fit = FitPlan.of([ws, surp], total_steps=100)
        >>> [e.owner for e in fit.entries], fit.steps_of(surp), fit.leader is ws
        (['SuccessivePruning', 'WeightSharing'], (0, 100), True)
    """

    entries: list[PlanEntry]
    leader: Any
    total_steps: int = 0
    max_epochs: int | None = None
    _by_id: dict[int, PlanEntry] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_id = {id(e.callback): e for e in self.entries}

    @classmethod
    def of(
        cls,
        callbacks: Sequence[Planned],
        total_steps: int = 0,
        max_epochs: int | None = None,
        trainer: pl.Trainer | None = None,
    ) -> FitPlan:
        """The plan of ``callbacks`` (in the order the Trainer holds them; the first leads)."""
        windows = resolve_windows(callbacks, trainer)
        ordered = sorted(callbacks, key=lambda cb: ASPECTS.index(cb.ASPECT))
        entries = [PlanEntry(cb, windows[id(cb)]) for cb in ordered]
        return cls(entries, callbacks[0] if callbacks else None, total_steps, max_epochs)

    @property
    def order(self) -> list[Any]:
        """The callbacks in aspect order: the order their per-step and end-of-fit actions run in."""
        return [e.callback for e in self.entries]

    def __contains__(self, callback: object) -> bool:
        return id(callback) in self._by_id

    def window_of(self, callback: object) -> tuple[float, float]:
        """``(start, end)`` fractions of the fit."""
        return self._by_id[id(callback)].window

    def steps_of(self, callback: object) -> tuple[int, int]:
        """The window in optimizer steps of this fit."""
        start, end = self.window_of(callback)
        return round(start * self.total_steps), round(end * self.total_steps)

    def check_composition(self, representation: Representation) -> None:
        """Refuse windows that overlap or run out of aspect order on shared tensors (before the first step).

        Raises:
            CompositionError: naming both callbacks and quoting this plan.
        """
        owned = {
            e.owner: {n for aspect in ASPECTS for n in representation.owned(e.owner, aspect)} for e in self.entries
        }
        for i, first in enumerate(self.entries):
            for later in self.entries[i + 1 :]:
                shared = sorted(owned[first.owner] & owned[later.owner])
                if not shared or later.aspect == first.aspect:
                    continue
                (s0, e0), (s1, e1) = first.window, later.window
                if e0 > s1:
                    raise CompositionError(
                        f"{first.owner} (window {s0:g}-{e0:g} of the fit, {first.aspect}) and {later.owner} (window "
                        f"{s1:g}-{e1:g}, {later.aspect}) act on the same tensors ({', '.join(shared[:3])}"
                        f"{', ...' if len(shared) > 3 else ''}) in overlapping windows: the {first.aspect} must be "
                        f"decided before the {later.aspect}. Give {first.owner} an `end` at most {later.owner}'s "
                        "`start`, or leave every `start`/`end` unset for consecutive default windows.\n"
                        f"The fit plan:\n{self}"
                    )

    def rows(self) -> list[dict[str, str]]:
        """The plan as rows of text: callback, aspect, window in fractions, steps and epochs, events, guard."""
        rows = []
        for e in self.entries:
            start, end = e.window
            steps = self.steps_of(e.callback) if self.total_steps else None
            epochs = (
                f"{start * self.max_epochs:g}-{end * self.max_epochs:g}" if self.max_epochs not in (None, -1) else "?"
            )
            rows.append(
                {
                    "callback": e.owner,
                    "aspect": e.aspect,
                    "window": f"{start:g}-{end:g}",
                    "steps": f"{steps[0]}-{steps[1]}" if steps is not None else "?",
                    "epochs": epochs,
                    "events": e.callback.planned_events(e.window, steps),
                    "guard": e.callback.guard_summary(),
                }
            )
        return rows

    def table(self) -> Table:
        """The plan as a rich table."""
        steps = f"{self.total_steps:,} optimizer steps" if self.total_steps else "steps not known before the fit"
        table = Table(title=f"Fit plan ({steps}; {self.leader.owner if self.leader else '-'} leads)")
        for column in ("callback", "aspect", "window", "steps", "epochs", "events", "guard"):
            table.add_column(column)
        for row in self.rows():
            table.add_row(*row.values())
        return table

    def print(self) -> None:
        """Print :meth:`table` to the terminal."""
        Console().print(self.table())

    def __str__(self) -> str:
        rows = self.rows()
        if not rows:
            return "(no compression callbacks)"
        columns = list(rows[0])
        widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
        lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
        lines += ["  ".join(r[c].ljust(widths[c]) for c in columns) for r in rows]
        return "\n".join(lines)


def plan(trainer: pl.Trainer, total_steps: int | None = None) -> FitPlan:
    """The fit plan of ``trainer``'s compression callbacks, before training: windows, events, guards.

    Args:
        trainer: a Trainer holding compression callbacks.
        total_steps: the fit's optimizer steps, for windows in steps; default: ``max_steps`` when set, else the
            steps are known only once the fit starts (each fit logs its plan then).

    Examples:
        >>> import lightning.pytorch as pl, lightning_compress as lc
        >>> trainer = pl.Trainer(max_steps=200, callbacks=[lc.NeuronElimination(), lc.SuccessivePruning()],
        ...                      logger=False, enable_checkpointing=False, enable_progress_bar=False)
        >>> [(row["callback"], row["steps"]) for row in lc.plan(trainer).rows()]
        [('NeuronElimination', '0-100'), ('SuccessivePruning', '100-200')]
    """
    callbacks = compression_callbacks(trainer)
    if total_steps is None:
        total_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else 0
    return FitPlan.of(callbacks, total_steps=total_steps, max_epochs=trainer.max_epochs, trainer=trainer)
