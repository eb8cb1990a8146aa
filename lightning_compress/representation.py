"""One representation per tensor, with an owner per aspect; the codec of each tensor is derived from it.

A compressed tensor has three aspects, each decided by at most one compression method:

* **structure**: which rows/columns exist (NeuronElimination shrinks layers);
* **support**: which entries are non-zero (SuccessivePruning);
* **values**: what the surviving entries are (Ternarization: ``{0, +-1} x scale``; WeightSharing: a codebook;
  SuccessivePruning's refinement when no value method follows it).

Callbacks *claim* aspects of named tensors before training; a second claim on the same aspect of the same tensor is
refused (:class:`CompositionError`, naming both owners). When a method finishes it records its side information
(a codebook, a stream) on its claim. :meth:`Representation.codec_plan` then derives each tensor's codec at save time:
support + codebook values -> ``sparse_codebook`` (positions and codebook indices in one entropy-coded stream),
codebook alone -> ``codebook``, ternary -> ``ternary``, SuccessivePruning's own values -> ``surp``; unclaimed values ->
the default (``dense``). The representation is plain data (:meth:`Representation.state_dict`), so callbacks keep it in
their checkpoint state and a resumed fit rebuilds it.

This module imports nothing above :mod:`lightning_compress.codec`.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lightning_compress.codec.base import CodecSpec

__all__ = [
    "ASPECTS",
    "REPRESENTATION_ATTR",
    "Claim",
    "CompositionError",
    "Representation",
    "TensorRepresentation",
    "find_representation",
    "representation_of",
]

#: The aspects of a tensor, in the order methods act on them (structure first, values last).
ASPECTS = ("structure", "support", "values")
#: Attribute on the stored module (the artifact's root) that holds its :class:`Representation`.
REPRESENTATION_ATTR = "_lc_representation"


class CompositionError(ValueError):
    """Two compression methods claim the same aspect of the same tensors, or act on them in overlapping windows."""


@dataclass
class Claim:
    """One owner's claim on one aspect of one tensor.

    Attributes:
        owner: the claiming callback's name (e.g. ``"SuccessivePruning"``).
        kind: what the owner makes of the aspect (``"surp"``, ``"codebook"``, ``"ternary"``, ``"eliminate"``).
        options: side information the codec needs, set when the method finishes (plain JSON-able data).
    """

    owner: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TensorRepresentation:
    """The three aspects of one tensor and who owns each (``None``: untouched)."""

    name: str
    structure: Claim | None = None
    support: Claim | None = None
    values: Claim | None = None

    def codec(self) -> CodecSpec | None:
        """The codec this representation calls for, or ``None`` for the default (dense).

        Examples:
            >>> rep = TensorRepresentation("fc.weight", support=Claim("SuccessivePruning", "surp"))
            >>> rep.values = Claim("WeightSharing", "codebook", {"codebook": [-0.5, 0.5], "counts": [3, 4]})
            >>> rep.codec().codec
            'sparse_codebook'
        """
        values = self.values
        if values is None or not values.options:
            return None  # nothing decided yet (or the method never finished): stored as the default
        if values.kind == "codebook":
            if self.support is not None:
                return CodecSpec("sparse_codebook", dict(values.options))
            return CodecSpec("codebook", dict(values.options))
        return CodecSpec(values.kind, dict(values.options))


class Representation:
    """The representation of every claimed tensor of one model.

    Examples:
        >>> rep = Representation()
        >>> rep.claim("SuccessivePruning", "support", ["fc.weight"], kind="surp")
        >>> rep.claim("Ternarization", "support", ["fc.weight"], kind="ternary")
        Traceback (most recent call last):
        ...
        lightning_compress.representation.CompositionError: Ternarization and SuccessivePruning both claim ...
    """

    def __init__(self) -> None:
        self.tensors: dict[str, TensorRepresentation] = {}
        #: owners compressing in the fit under way (``None``: not in a fit); a claim of an owner that is not among
        #: them is history (an earlier fit's decision) and gives way to a new claim instead of refusing it
        self.active: set[str] | None = None
        #: tensor name -> its shape before structural compression (NeuronElimination records it before the first
        #: step): the reference a file's ratio is taken against, whichever module holding these tensors is saved
        self.original_shapes: dict[str, tuple[int, ...]] = {}

    def claim(self, owner: str, aspect: str, names: Iterable[str], kind: str, why: str = "") -> None:
        """Make ``owner`` the owner of ``aspect`` of every named tensor.

        Raises:
            CompositionError: another owner holds that aspect of some of them (both names, the tensors and the way
                out in the message); nothing is claimed then.
            ValueError: ``aspect`` is not one of :data:`ASPECTS`.
        """
        if aspect not in ASPECTS:
            raise ValueError(f"`aspect` must be one of {ASPECTS}, got {aspect!r}.")
        names = list(names)
        taken: dict[str, list[str]] = {}
        for name in names:
            current = getattr(self.tensors.get(name), aspect, None)
            if current is not None and current.owner != owner and (self.active is None or current.owner in self.active):
                taken.setdefault(current.owner, []).append(name)
        for other, clash in taken.items():
            shown = ", ".join(clash[:4]) + (f", ... ({len(clash) - 4} more)" if len(clash) > 4 else "")
            raise CompositionError(
                f"{owner} and {other} both claim the {aspect} of {len(clash)} tensor(s) ({shown}): each aspect of a "
                f"tensor has one owner. {why or _WAY_OUT[aspect]}"
            )
        for name in names:
            rep = self.tensors.setdefault(name, TensorRepresentation(name))
            current = getattr(rep, aspect)
            if current is None or current.owner != owner or current.kind != kind:
                setattr(rep, aspect, Claim(owner, kind))

    def owned(self, owner: str, aspect: str) -> list[str]:
        """Names of the tensors whose ``aspect`` ``owner`` holds, in claim order."""
        return [n for n, rep in self.tensors.items() if (c := getattr(rep, aspect)) is not None and c.owner == owner]

    def owner(self, name: str, aspect: str) -> str | None:
        """The owner of ``aspect`` of tensor ``name`` (``None`` if unclaimed)."""
        claim = getattr(self.tensors.get(name), aspect, None)
        return None if claim is None else claim.owner

    def decide(self, owner: str, aspect: str, options: Mapping[str, Mapping[str, Any]]) -> None:
        """Record the side information of ``owner``'s finished decision, tensor name -> codec options."""
        for name, opts in options.items():
            claim = getattr(self.tensors.get(name), aspect, None)
            if claim is None or claim.owner != owner:
                raise KeyError(f"{owner} records a decision on the {aspect} of {name!r}, which it does not own.")
            claim.options = dict(opts)

    def codec_plan(self) -> dict[str, CodecSpec]:
        """Tensor name -> codec, derived from each tensor's representation (unlisted tensors: the default)."""
        plan = {}
        for name, rep in self.tensors.items():
            spec = rep.codec()
            if spec is not None:
                plan[name] = spec
        return plan

    def state_dict(self) -> dict[str, Any]:
        """Plain data: ``{name: {aspect: {"owner", "kind", "options"}}}``."""
        return {
            name: {
                aspect: {"owner": c.owner, "kind": c.kind, "options": dict(c.options)}
                for aspect in ASPECTS
                if (c := getattr(rep, aspect)) is not None
            }
            for name, rep in self.tensors.items()
        }

    def load_state_dict(self, state: Mapping[str, Mapping[str, Mapping[str, Any]]], owner: str | None = None) -> None:
        """Restore claims from :meth:`state_dict` (only ``owner``'s, if given)."""
        for name, aspects in state.items():
            rep = self.tensors.setdefault(name, TensorRepresentation(name))
            for aspect, claim in aspects.items():
                if owner is None or claim["owner"] == owner:
                    setattr(rep, aspect, Claim(claim["owner"], claim["kind"], dict(claim.get("options", {}))))


_WAY_OUT = {
    "structure": "Give one of them `layers=` to split the network between them.",
    "support": "Give one of them `parameters=`/`layers=` to split the tensors between them.",
    "values": (
        "Two value methods on one tensor make no sense (its values are either ternary or shared from a codebook); give "
        "one of them `parameters=`/`layers=` to split the tensors between them."
    ),
}


#: Every module a representation is attached to (weakly): saving one of their submodules, or a module holding one of
#: them, finds the claims on its tensors by name.
_HOLDERS: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def representation_of(module: nn.Module) -> Representation:
    """The :class:`Representation` attached to ``module`` (created empty on first use)."""
    rep = getattr(module, REPRESENTATION_ATTR, None)
    if not isinstance(rep, Representation):
        rep = Representation()
        object.__setattr__(module, REPRESENTATION_ATTR, rep)
        _HOLDERS.add(module)
    return rep


def find_representation(module: nn.Module) -> Representation:
    """The claims on ``module``'s tensors, wherever the representation lives, keyed by ``module``'s own names.

    A callback keeps the representation on the module that was fit; a user then saves its backbone, a submodule, or
    a module that holds it. Claims come from ``module``'s own representation first, then from any module holding
    ``module`` (names with their prefix removed), then from any module ``module`` holds (prefix added).

    Examples:
        >>> import torch
        >>> outer = torch.nn.Sequential(torch.nn.Linear(2, 2))
        >>> representation_of(outer).claim("SuccessivePruning", "support", ["0.weight"], kind="surp")
        >>> sorted(find_representation(outer[0]).tensors)
        ['weight']
    """
    found = Representation()
    own = getattr(module, REPRESENTATION_ATTR, None)
    if isinstance(own, Representation):
        found.tensors.update(own.tensors)
        found.original_shapes.update(own.original_shapes)
    holders = [
        h
        for h in list(_HOLDERS)
        if h is not module
        and (getattr(h, REPRESENTATION_ATTR).tensors or getattr(h, REPRESENTATION_ATTR).original_shapes)
    ]
    if not holders:
        return found
    inside = {id(sub): prefix for prefix, sub in module.named_modules() if prefix}
    for holder in holders:
        held: Representation = getattr(holder, REPRESENTATION_ATTR)
        if id(holder) in inside:  # module holds the fit module: add the prefix
            prefix = inside[id(holder)] + "."
            for name, rep in held.tensors.items():
                found.tensors.setdefault(prefix + name, rep)
            for name, shape in held.original_shapes.items():
                found.original_shapes.setdefault(prefix + name, shape)
            continue
        prefix = next((p for p, sub in holder.named_modules() if sub is module and p), None)
        if prefix is not None:  # the fit module holds module: drop the prefix
            for name, rep in held.tensors.items():
                if name.startswith(prefix + "."):
                    found.tensors.setdefault(name[len(prefix) + 1 :], rep)
            for name, shape in held.original_shapes.items():
                if name.startswith(prefix + "."):
                    found.original_shapes.setdefault(name[len(prefix) + 1 :], shape)
    return found
