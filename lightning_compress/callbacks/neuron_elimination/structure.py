"""NeuronElimination's structure: the layer pairs and the history of rounds, the neurons alive, their masks, the shrink.

:class:`EliminationStructure` is the lowest of NeuronElimination's three parts: it keeps the method's state (plain
data: the pairs, the history of every round, the fit's bookkeeping), says which neurons are alive, holds the removed
ones at zero, shrinks the layers (after every round with ``removal="immediate"``, at the window's end otherwise) and
gives a resumed fit's model the checkpoint's shapes. The rounds are in :mod:`.rounds`, the callback in
:mod:`.callback`.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from rich.console import Console
from torch import nn
from typing_extensions import override

from lightning_compress.callbacks.base import CompressionCallback
from lightning_compress.functional.forward import ForwardInputs
from lightning_compress.functional.neuron_elimination import (
    LayerPair,
    RoundRecord,
    current_pairs,
    elimination_masks,
    kept_indices,
    shrink_,
)
from lightning_compress.report import elimination_table
from lightning_compress.surgery import resize_to_state

__all__ = ["EliminationStructure"]


class EliminationStructure(CompressionCallback):
    """The state and the structure of :class:`~lightning_compress.callbacks.neuron_elimination.NeuronElimination`.

    Its base class, below :class:`~lightning_compress.callbacks.neuron_elimination.rounds.EliminationRounds`; the
    settings it reads are the callback's arguments, declared here.
    """

    removal: str
    verbose: bool

    def __init__(
        self, forward_inputs: ForwardInputs | None = None, start: float | None = None, end: float | None = None
    ) -> None:
        super().__init__(forward_inputs, start=start, end=end)
        # state (plain data; see state_dict)
        self.pairs: list[LayerPair] = []
        self.history: list[dict[str, Any]] = []
        self.skipped: dict[str, str] = {}
        self._round = 0
        self._round_steps: list[int] = []
        self._stopped = False
        self._finished = False
        #: the step where the window's end shrank the layers mid-fit (None: at the end of fit, or not yet)
        self._shrunk_at: int | None = None
        self._stop_reason = ""
        self._capped = False
        self._monitor_resolved = False
        self._validated = False
        self._dense_params = 0
        self._dense_fp32_bytes = 0
        self._original_shapes: dict[str, list[int]] = {}
        self._table: list[tuple[int, int | None, int | None]] = []
        # runtime only
        self._warned_rows: set[str] = set()
        self._resize_hook: Any = None
        #: after a back-off: the most eliminations a round may make (doubled after a whole round fits)
        self._elimination_cap: int | None = None

    # -- bookkeeping ---------------------------------------------------------------------------------------------
    def removed(self) -> list[list[int]]:
        """Original indices of the removed neurons of every pair, in elimination order."""
        removed: list[list[int]] = [[] for _ in self.pairs]
        for entry in self.history:
            for record in entry["records"]:
                removed[record["pair"]].extend(int(n) for n in record["neurons"].tolist())
        return removed

    def alive(self) -> list[list[int]]:
        """Original indices of the surviving neurons of every pair (ascending)."""
        return [sorted(set(range(p.channels)) - set(gone)) for p, gone in zip(self.pairs, self.removed(), strict=True)]

    def _refresh_masks(self, pl_module: nn.Module) -> None:
        """Hold the removed neurons' entries at zero (mask removal), by tensor name."""
        if self.removal == "immediate" or self._finished:
            self.holds.release()
            return
        module = self.target_module(pl_module)
        self.holds.hold_support(module, elimination_masks(module, self.pairs, self.removed()))

    def _current_pairs(self, alive: list[list[int]]) -> list[LayerPair]:
        return current_pairs(self.pairs, alive, shrunk=self.removal == "immediate")

    def _shrink_round(
        self, trainer: pl.Trainer, module: nn.Module, alive_before: list[list[int]], records: list[RoundRecord]
    ) -> None:
        positions = [[] for _ in self.pairs]  # type: list[list[int]]
        for record in records:
            lookup = {orig: pos for pos, orig in enumerate(alive_before[record.pair])}
            positions[record.pair] = [lookup[e.neuron] for e in record.eliminations]
        current = self._current_pairs(alive_before)

        def change() -> dict[str, list[tuple[int, torch.Tensor]]]:
            kept = kept_indices(module, current, positions)
            shrink_(module, current, positions)
            return kept

        self.rebuild_optimizers(trainer, change)

    def _shrink(self, trainer: pl.Trainer, pl_module: pl.LightningModule, rebuild: bool) -> None:
        """Shrink the layers to the surviving neurons (mask removal) and say what was removed and why it stopped."""
        module = self.target_module(pl_module)
        if self.removal == "mask":
            self.apply_holds(pl_module)
            removed = self.removed()

            def change() -> dict[str, list[tuple[int, torch.Tensor]]]:
                kept = kept_indices(module, self.pairs, removed)
                requires_grad = {n: p.requires_grad for n, p in module.named_parameters()}
                shrink_(module, self.pairs, removed)
                for name, param in module.named_parameters():  # torch-pruning's new Parameters all train
                    param.requires_grad_(requires_grad.get(name, param.requires_grad))
                return kept

            if rebuild:
                self.rebuild_optimizers(trainer, change)
            else:
                change()
        self._finished = True
        self.holds.release()
        if rebuild:
            self._shrunk_at = int(trainer.global_step)
        params = sum(p.numel() for p in module.parameters())
        figures = {"final_params": float(params), "final_params_fraction": params / max(self._dense_params, 1)}
        figures["rounds_done"] = float(len(self.history))
        self.log_figures(trainer, figures)
        widths = ", ".join(
            f"{p.producer} {p.channels}->{len(a)}" for p, a in zip(self.pairs, self.alive(), strict=True)
        )
        rank_zero_info(
            f"NeuronElimination removed {sum(len(r) for r in self.removed())} neurons ({widths}), keeping "
            f"{figures['final_params_fraction']:.1%} of the parameters; it stopped because {self._stop_reason}."
        )
        if self.verbose and trainer.is_global_zero:
            Console().print(self.summary_table(module))

    def summary_table(self, module: nn.Module) -> Any:
        """A rich table: neurons per layer before and after, and the parameter count (``elimination_table``)."""
        params = sum(p.numel() for p in module.parameters())
        return elimination_table(self.pairs, self.alive(), self._dense_params, params)

    def _resize_on_load(self, pl_module: nn.Module) -> None:
        """Give the model a checkpoint's (smaller) shapes just before Lightning loads it (resuming)."""
        if self._resize_hook is None:
            self._resize_hook = pl_module.register_load_state_dict_pre_hook(_resize_before_load)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        if stage == "fit" and self._resize_hook is not None:
            # the resize serves a resumed fit's checkpoint only: afterwards a load of other shapes must fail loudly
            self._resize_hook.remove()
            self._resize_hook = None


def _resize_before_load(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    resize_to_state(module, {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)})
