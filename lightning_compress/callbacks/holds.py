"""Holds: the masks (support) and frozen values a callback keeps for the rest of the fit, by tensor name.

Held by name and looked up in the module every time they are applied, so a layer that shrinks or is swapped never
leaves a stale reference behind. Also the snapshot an undo goes back to, and the holds' checkpoint form.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn

__all__ = ["Holds", "StepHooks", "clips_gradients", "held_gradients_matter"]

#: Optimizers whose update of an entry reads only that entry's gradient and state (no norms across entries): with
#: them a held entry's gradient cannot change a kept entry's update, and re-applying the holds after the step is
#: all it takes (exact types: a subclass may compute anything in its ``step``).
ELEMENTWISE_OPTIMIZERS: frozenset[type] = frozenset(
    {
        torch.optim.SGD,
        torch.optim.Adam,
        torch.optim.AdamW,
        torch.optim.Adamax,
        torch.optim.Adagrad,
        torch.optim.Adadelta,
        torch.optim.RMSprop,
        torch.optim.NAdam,
        torch.optim.RAdam,
        torch.optim.Rprop,
    }
)


def clips_gradients(trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
    """Whether this fit clips gradients (the Trainer's setting, or a module's own ``configure_gradient_clipping``)."""
    overridden = type(pl_module).configure_gradient_clipping is not pl.LightningModule.configure_gradient_clipping
    return overridden or bool(getattr(trainer, "gradient_clip_val", None))


#: Parameters registered on any module since import (a shrink, a resize, a layer swapped in); a change tells
#: :meth:`Holds.apply` that the tensors it resolved may have been replaced.
_registrations = [0]


def _count_registration(*_: Any) -> None:
    _registrations[0] += 1


torch.nn.modules.module.register_module_parameter_registration_hook(_count_registration)


class StepHooks:
    """Hooks on the fit's optimizers that put the holds back right after every ``step()``.

    Right after the step the weights are still in the cache (on a fast CPU loop about a quarter cheaper than in
    ``on_train_batch_end``), and a batch that only accumulates gradients, or an AMP step skipped on an overflow,
    costs nothing. Optimizers rebuilt mid-fit (a shrink) are new objects: :meth:`ensure` runs every batch.

    Attributes:
        seconds: wall time spent in the hooks (``bench.overhead`` adds it to the callbacks' hook time).
        calls: how many times they ran.
    """

    def __init__(self) -> None:
        self._handles: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self.seconds = 0.0
        self.calls = 0

    def __bool__(self) -> bool:
        return bool(self._handles)

    def __getstate__(self) -> dict[str, Any]:  # hooks on this process's optimizers; a copy registers its own
        return {"seconds": self.seconds, "calls": self.calls}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]
        self.seconds, self.calls = state["seconds"], state["calls"]

    def ensure(self, optimizers: Iterable[Any], put_back: Callable[[], None]) -> None:
        """Hook every optimizer not hooked yet to run ``put_back`` after its steps."""

        def after_step(*_: Any) -> None:
            started = time.perf_counter()
            put_back()
            self.seconds += time.perf_counter() - started
            self.calls += 1

        for optimizer in optimizers:
            if optimizer not in self._handles:
                self._handles[optimizer] = optimizer.register_step_post_hook(after_step)

    def remove(self) -> None:
        """Take every hook off (the end of the fit)."""
        for handle in list(self._handles.values()):
            handle.remove()
        self._handles = weakref.WeakKeyDictionary()


def held_gradients_matter(optimizer: Any, clips_gradients: bool) -> bool:
    """Whether the gradients of held entries must be zeroed before ``optimizer`` steps.

    They must where they reach the kept entries' updates: gradient clipping by norm (the norm would count them), or
    an optimizer that is not known to update each entry from its own gradient alone (LAMB/LARS trust ratios, L-BFGS,
    a user's subclass). Otherwise the held values, put back after every step, are the whole job, and the gradient
    pass (the costlier of the two on a fast loop: it reads gradients straight out of the backward pass) is skipped.

    Examples:
        >>> held_gradients_matter(torch.optim.Adam([torch.zeros(1, requires_grad=True)]), clips_gradients=False)
        False
        >>> held_gradients_matter(torch.optim.LBFGS([torch.zeros(1, requires_grad=True)]), clips_gradients=False)
        True
    """
    optimizer = getattr(optimizer, "optimizer", optimizer)  # Lightning's wrapper around the torch optimizer
    return clips_gradients or type(optimizer) not in ELEMENTWISE_OPTIMIZERS


class Holds:
    """The masks and frozen values of one callback.

    Attributes:
        support: tensor name -> mask (True keeps, False prunes), re-applied after every optimizer step.
        frozen: tensor name -> value held fixed (gradients zeroed, value put back after every step).

    Examples:
        >>> layer = torch.nn.Linear(3, 2)
        >>> holds = Holds()
        >>> holds.hold_support(layer, {"weight": torch.tensor([[1, 0, 1], [0, 1, 1]])})
        >>> int((layer.weight == 0).sum()), bool(holds)
        (2, True)
        >>> sorted(Holds.masks_from_state(holds.state())) == ["weight"]
        True
    """

    def __init__(self) -> None:
        self.support: dict[str, torch.Tensor] = {}
        self.frozen: dict[str, torch.Tensor] = {}
        #: what :meth:`apply` multiplies and copies, resolved once per set of holds (see :func:`_parameters_changed`)
        self._resolved: tuple[Any, ...] | None = None

    def __bool__(self) -> bool:
        return bool(self.support or self.frozen)

    def __getstate__(self) -> dict[str, Any]:  # the resolved tensors are this process's parameters: not copied
        return {"support": self.support, "frozen": self.frozen}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]
        self.support, self.frozen = state["support"], state["frozen"]

    def hold_support(self, module: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
        """Keep the zeros of ``masks`` (name -> 0/1 or bool tensor) for the rest of the fit, applied now.

        Held as ``bool`` on the parameter's device: a quarter of a float mask's bytes.
        """
        params = dict(module.named_parameters())
        self.support = {n: m.to(params[n].device, torch.bool) for n, m in masks.items()}
        self._resolved = None
        self.apply(module)

    def hold_values(self, module: nn.Module, names: Iterable[str]) -> None:
        """Keep the named tensors at their current values for the rest of the fit."""
        params = dict(module.named_parameters())
        self.frozen.update({n: params[n].detach().clone() for n in names})
        self._resolved = None

    def release(self) -> None:
        """Stop holding masks and values (e.g. after the layers they refer to changed shape)."""
        self.support, self.frozen = {}, {}
        self._resolved = None

    @torch.no_grad()
    def apply(self, module: nn.Module) -> None:
        """Re-apply the masks and frozen values (momentum and weight decay move entries whose gradient is zero).

        Runs after every optimizer step: the tensors and factors are resolved once per set of holds and module, and
        again only when a parameter was registered anywhere since (a shrink, a resize, a swap of layers).
        """
        if not (self.support or self.frozen):
            return
        key = (id(module), _registrations[0])  # every change of the holds themselves drops the cache
        if self._resolved is None or self._resolved[0] != key:
            params = dict(module.named_parameters())
            self._resolved = (
                key,
                [params[n] for n in self.support],
                _factors(self.support.values()),
                [params[n] for n in self.frozen],
                list(self.frozen.values()),
            )
        _, masked, factors, frozen, values = self._resolved
        if masked:
            torch._foreach_mul_(masked, factors)
        if frozen:
            torch._foreach_copy_(frozen, values)

    def mask_gradients(self, module: nn.Module) -> None:
        """Zero the gradients of pruned entries and frozen tensors, one fused call per kind."""
        if not (self.support or self.frozen):
            return
        params = dict(module.named_parameters())
        grads: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        for name, mask in self.support.items():
            grad = params[name].grad
            if grad is not None:
                grads.append(grad)
                masks.append(mask)
        if grads:  # one fused call for every tensor, not one kernel launch per tensor
            torch._foreach_mul_(grads, _factors(masks))
        frozen = [g for g in (params[n].grad for n in self.frozen) if g is not None]
        if frozen:
            torch._foreach_zero_(frozen)

    def take_snapshot(self, module: nn.Module, names: Iterable[str]) -> dict[str, Any]:
        """The named tensors, the held masks and the module's buffers, copied to the CPU (for an undo).

        The BatchNorm statistics were re-estimated for these weights before the validation that judged them, so
        they go back with them (:meth:`restore_snapshot`).
        """
        params = dict(module.named_parameters())
        return {
            "weights": {n: params[n].detach().to("cpu", copy=True) for n in names},
            "masks": {n: m.detach().to("cpu", copy=True) for n, m in self.support.items()},
            "buffers": {n: b.detach().to("cpu", copy=True) for n, b in module.named_buffers()},
        }

    @torch.no_grad()
    def restore_snapshot(self, module: nn.Module, snapshot: Mapping[str, Any]) -> None:
        """Put back what :meth:`take_snapshot` copied (weights, statistics) and hold its masks again."""
        params = dict(module.named_parameters())
        for name, value in snapshot["weights"].items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
        for name, buffer in module.named_buffers():
            if name in snapshot["buffers"] and snapshot["buffers"][name].shape == buffer.shape:
                buffer.copy_(snapshot["buffers"][name].to(buffer.device, buffer.dtype))
        self.release()
        if snapshot["masks"]:
            self.hold_support(module, snapshot["masks"])

    def state(self) -> dict[str, Any]:
        """The held masks as checkpoint data: bit-packed (one bit per entry), with names and shapes."""
        return {
            "mask_names": list(self.support),
            "masks": [
                torch.from_numpy(np.packbits(m.detach().cpu().numpy().astype(bool).reshape(-1)))
                for m in self.support.values()
            ],
            "mask_shapes": [list(m.shape) for m in self.support.values()],
        }

    @staticmethod
    def masks_from_state(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Inverse of :meth:`state` (name -> bool mask on the CPU)."""
        masks = {}
        for name, packed, shape in zip(
            state.get("mask_names", []), state.get("masks", []), state.get("mask_shapes", []), strict=True
        ):
            bits = np.unpackbits(packed.numpy())[: math.prod(shape)].astype(bool)
            masks[name] = torch.from_numpy(bits).reshape(shape)
        return masks


def _factors(masks: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Boolean masks seen as 0/1 bytes, without a copy: the same product, several times faster.

    Multiplying a float tensor by a ``bool`` tensor takes a slow type-promotion path (0.14 ms for LeNet-300-100's
    weights on 2 CPU cores, against 0.04 ms for the same bytes read as ``uint8``; ``bench/results/overhead.md``).
    """
    return [m.view(torch.uint8) if m.dtype == torch.bool else m for m in masks]
