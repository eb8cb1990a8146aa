"""Modules that compression methods put into a network: ternary-weight layers and step activations.

:class:`TernaryLinear` / :class:`TernaryConv2d` are drop-in replacements that share the original layer's parameters
(so optimizers, DDP and checkpoints keep working) and use ternary weights in the forward pass with straight-through
gradients. :class:`StepActivation` is a piecewise-constant activation with a ramp-shaped surrogate gradient; it is
recorded in artifacts, so :func:`lightning_compress.load` rebuilds it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_compress.codec.registry import register_module_type
from lightning_compress.functional.ternarization import StepFunction, ternary_ste

__all__ = [
    "StepActivation",
    "TernaryConv2d",
    "TernaryLinear",
    "TernaryMixin",
    "TernaryMultiheadAttention",
    "ternary_layer",
    "ternary_tensors",
]


class TernaryMixin:
    """Ternary forward weights for a Linear/Conv2d subclass; configuration in ``ternary_options``."""

    def ternary_weight(self) -> torch.Tensor:
        """The weight as the forward pass sees it: ``scale * {-1, 0, +1}``, straight-through to the latent."""
        weight: torch.Tensor = self.weight  # type: ignore[attr-defined]
        return ternary_ste(weight, **self.ternary_options)  # type: ignore[attr-defined]


class TernaryLinear(TernaryMixin, nn.Linear):
    """``nn.Linear`` whose forward uses ternary weights (see :func:`ternary_layer`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Linear map with the ternarised weight."""
        return F.linear(x, self.ternary_weight(), self.bias)


class TernaryConv2d(TernaryMixin, nn.Conv2d):
    """``nn.Conv2d`` whose forward uses ternary weights (see :func:`ternary_layer`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolution with the ternarised weight."""
        return self._conv_forward(x, self.ternary_weight(), self.bias)


class TernaryMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose projections are ternary in the forward pass (see :func:`ternary_layer`).

    Its projection weights are raw parameters that ``F.multi_head_attention_forward`` reads directly (the output
    projection's ``forward`` is never called), so no layer can be swapped inside it: the ternary tensors replace the
    latent ones for the duration of the call (``torch.func.functional_call``), straight-through to them.
    """

    ternary_options: dict[str, Any]

    def ternary_weight(self, name: str) -> torch.Tensor:
        """The tensor ``name`` (e.g. ``"in_proj_weight"``) as the forward pass sees it."""
        return ternary_ste(self.get_parameter(name), **self.ternary_options)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Attention with ternary projections."""
        if self.__dict__.get("_lc_inside"):  # the call functional_call makes with the ternary tensors in place
            return super().forward(*args, **kwargs)
        overrides = {name: self.ternary_weight(name) for name in ternary_tensors(self)}
        self.__dict__["_lc_inside"] = True
        try:
            return torch.func.functional_call(self, overrides, args, kwargs)
        finally:
            self.__dict__["_lc_inside"] = False


_TERNARY_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: TernaryLinear,
    nn.Conv2d: TernaryConv2d,
    nn.MultiheadAttention: TernaryMultiheadAttention,
}


def ternary_tensors(layer: nn.Module) -> list[str]:
    """The tensors of ``layer`` (relative names) that Ternarization makes ternary.

    Examples:
        >>> ternary_tensors(nn.MultiheadAttention(8, 2))
        ['in_proj_weight', 'out_proj.weight']
    """
    if isinstance(layer, nn.MultiheadAttention):
        inputs = (
            ["in_proj_weight"]
            if layer.in_proj_weight is not None
            else ["q_proj_weight", "k_proj_weight", "v_proj_weight"]
        )
        return [*inputs, "out_proj.weight"]
    return ["weight"]


def ternary_layer(layer: nn.Module, **options: Any) -> nn.Module:
    """A ternary twin of an ``nn.Linear``/``nn.Conv2d``/``nn.MultiheadAttention`` that shares its parameter objects.

    Args:
        layer: the layer (exactly one of those types).
        **options: :func:`~lightning_compress.functional.ternarization.ternary_ste` options (rule, sparsity,
            per_channel).

    Raises:
        TypeError: for any other layer type.

    Examples:
        >>> import torch
        >>> dense = torch.nn.Linear(8, 4)
        >>> twin = ternary_layer(dense)
        >>> twin.weight is dense.weight, len(torch.unique(twin.ternary_weight()[0].abs()))
        (True, 2)
    """
    cls = _TERNARY_CLASSES.get(type(layer))
    if cls is None:
        raise TypeError(
            f"Only nn.Linear, nn.Conv2d and nn.MultiheadAttention can be ternarised, got {type(layer).__name__}."
        )
    twin = cls.__new__(cls)
    twin.__dict__.update(layer.__dict__)  # the same Parameter objects, hooks and attributes
    twin.__dict__["ternary_options"] = dict(options)
    return twin


def dense_layer(layer: nn.Module) -> nn.Module:
    """The plain layer sharing a ternary layer's parameters (inverse of :func:`ternary_layer`)."""
    for dense_cls, ternary_cls in _TERNARY_CLASSES.items():
        if type(layer) is ternary_cls:
            plain = dense_cls.__new__(dense_cls)
            plain.__dict__.update(
                {k: v for k, v in layer.__dict__.items() if k not in ("ternary_options", "_lc_inside")}
            )
            return plain
    raise TypeError(f"{type(layer).__name__} is not a ternary layer.")


@register_module_type("step_activation")
class StepActivation(nn.Module):
    """Piecewise-constant activation: ``levels[k]`` on ``(thresholds[k-1], thresholds[k]]``.

    Levels are tied: ``levels = [0, *amplitudes][pattern]``, so a level that is zero stays zero and levels that are
    equal stay equal while the amplitudes train (a ``{0, b}`` activation stays binary). The forward pass is exactly
    the step function. The backward pass uses a ramp of half-width ``ramp`` around each threshold (the box-shaped
    straight-through gradient of NTK-LC's fine-tuning variant), which also gives the thresholds gradients; the
    amplitudes get their exact gradient. With ``learnable=False`` thresholds and amplitudes are buffers.

    Args:
        num_thresholds: number of thresholds (there is one more level).
        num_amplitudes: number of distinct non-zero levels.
        learnable: thresholds and amplitudes are trainable parameters.
        ramp: half-width of the surrogate-gradient ramp, in input units.

    Examples:
        >>> import torch
        >>> act = StepActivation.from_step(StepFunction((0.0,), (0.0, 2.0)))
        >>> act(torch.tensor([-1.0, 0.5])).tolist()
        [0.0, 2.0]
    """

    thresholds: torch.Tensor
    amplitudes: torch.Tensor
    pattern: torch.Tensor

    def __init__(self, num_thresholds: int = 2, num_amplitudes: int = 1, learnable: bool = False, ramp: float = 0.5):
        super().__init__()
        if num_thresholds < 1:
            raise ValueError(f"`num_thresholds` must be >= 1, got {num_thresholds!r}.")
        if not 1 <= num_amplitudes <= num_thresholds + 1:
            raise ValueError(f"`num_amplitudes` must be in [1, num_thresholds + 1], got {num_amplitudes!r}.")
        if not ramp > 0:
            raise ValueError(f"`ramp` must be > 0, got {ramp!r}.")
        self.learnable, self.ramp = bool(learnable), float(ramp)
        thresholds, amplitudes = torch.zeros(num_thresholds), torch.zeros(num_amplitudes)
        if self.learnable:
            self.thresholds, self.amplitudes = nn.Parameter(thresholds), nn.Parameter(amplitudes)
        else:
            self.register_buffer("thresholds", thresholds)
            self.register_buffer("amplitudes", amplitudes)
        self.register_buffer("pattern", torch.zeros(num_thresholds + 1, dtype=torch.long))

    @classmethod
    def from_step(cls, step: StepFunction, learnable: bool = False, ramp: float = 0.5) -> StepActivation:
        """A module computing ``step``; equal levels are tied, zero levels fixed."""
        values = sorted({float(v) for v in step.levels if float(v) != 0.0})
        if not values:
            raise ValueError("A step activation needs at least one non-zero level.")
        module = cls(len(step.thresholds), len(values), learnable=learnable, ramp=ramp)
        with torch.no_grad():
            module.thresholds.copy_(torch.tensor(step.thresholds, dtype=torch.float32))
            module.amplitudes.copy_(torch.tensor(values, dtype=torch.float32))
            module.pattern.copy_(torch.tensor([0 if v == 0 else values.index(float(v)) + 1 for v in step.levels]))
        return module

    @property
    def levels(self) -> torch.Tensor:
        """The value on each interval."""
        return torch.cat([self.amplitudes.new_zeros(1), self.amplitudes])[self.pattern]

    def step_function(self) -> StepFunction:
        """The current step as plain numbers (thresholds sorted, as the moments need)."""
        thresholds = torch.sort(self.thresholds.detach()).values.tolist()
        return StepFunction(tuple(thresholds), tuple(self.levels.detach().tolist()))

    def lc_module_kwargs(self) -> dict[str, Any]:
        """Constructor arguments recorded in artifacts."""
        return {
            "num_thresholds": int(self.thresholds.numel()),
            "num_amplitudes": int(self.amplitudes.numel()),
            "learnable": self.learnable,
            "ramp": self.ramp,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The step function of ``x`` (surrogate gradient when anything needs one)."""
        levels = self.levels
        jumps = levels[1:] - levels[:-1]
        above = x.unsqueeze(-1) > self.thresholds
        hard = levels[0] + (above.to(x.dtype) * jumps).sum(-1)
        if not (x.requires_grad or self.thresholds.requires_grad or self.amplitudes.requires_grad):
            return hard
        # value: the exact step (amplitudes get their exact gradient through it); x and thresholds: the ramp's slope
        ramp = ((x.unsqueeze(-1) - self.thresholds) / (2 * self.ramp) + 0.5).clamp(0.0, 1.0)
        surrogate = (ramp * jumps.detach()).sum(-1)
        return hard + (surrogate - surrogate.detach())

    def extra_repr(self) -> str:
        """Thresholds and levels."""
        return f"thresholds={self.thresholds.tolist()}, levels={self.levels.tolist()}"
