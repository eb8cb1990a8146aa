"""NeuronElimination's structure: the layer pairs and the history of rounds, the neurons alive, their masks, the shrink.

:class:`EliminationStructure` is the lowest of NeuronElimination's three parts: it finds the layer pairs, keeps the
method's state (plain data: the pairs, the history of every round, the fit's bookkeeping), says which neurons are
alive, holds the removed ones at zero, shrinks the layers (after every round with ``removal="immediate"``, at the
window's end otherwise) and gives a resumed fit's model the checkpoint's shapes. The rounds are in :mod:`.rounds`,
the callback in :mod:`.callback`.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from rich.console import Console
from torch import nn
from typing_extensions import override

from lightning_compress.callbacks.base import CompressionCallback
from lightning_compress.codec.base import fp32_nbytes
from lightning_compress.functional.forward import ForwardInputs
from lightning_compress.functional.neuron_elimination import (
    LayerPair,
    RoundRecord,
    current_pairs,
    elimination_masks,
    kept_indices,
    layer_floor,
    param_count,
    param_table,
    shrink_,
    skipped_summary,
    trainable_pairs,
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
    layers: list[str] | None
    target_params: float | None
    min_neurons: int
    min_layer_fraction: float

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

    def _find_pairs(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Trace the pairs (refused when there are none), take the dense model's measures, claim what rounds write."""
        module = self.target_module(pl_module)
        rep = self.representation(pl_module)
        example = self.check_forward(trainer, pl_module, "NeuronElimination")
        self.pairs, self.skipped = trainable_pairs(module, example, self.layers)
        if not self.pairs:
            raise ValueError(
                f"NeuronElimination found no layer pair it can eliminate neurons from: "
                f"{skipped_summary(self.skipped)}. A pair is a Linear/Conv2d whose outputs reach exactly one "
                "Linear/Conv2d through channel-wise operations; pass `layers=` to name producers, or leave "
                "NeuronElimination out of this fit."
            )
        self._dense_params = sum(p.numel() for p in module.parameters())
        self._dense_fp32_bytes = sum(fp32_nbytes(t.numel(), t.dtype) for t in module.state_dict().values())
        # the file's ratio is against these shapes, whichever module holding them is saved
        self._original_shapes = {n: list(t.shape) for n, t in module.state_dict().items()}
        for name, shape in self._original_shapes.items():
            rep.original_shapes.setdefault(name, tuple(shape))
        self._table = param_table(module, self.pairs)
        self._check_floors()
        self._claim_written(trainer, pl_module, module)
        rank_zero_info(
            f"NeuronElimination: {len(self.pairs)} layer pairs "
            f"({', '.join(f'{p.producer}->{p.consumer}' for p in self.pairs)}); skipped: {self.skipped}"
        )

    def _check_floors(self) -> None:
        """Say before the first step when the per-layer floors keep the model above ``target_params``."""
        if self.target_params is None or not self.pairs:
            return
        floor = param_count(self._table, self.pairs, [self._floor(p) for p in self.pairs])
        if floor > self.target_params * self._dense_params:
            rank_zero_warn(
                f"NeuronElimination: target_params={self.target_params} is out of reach above the per-layer floors "
                f"(min_layer_fraction={self.min_layer_fraction}, min_neurons={self.min_neurons}): at the floors the "
                f"model keeps {floor / max(self._dense_params, 1):.1%} of its parameters, and annealing will stop "
                "there. Lower `min_layer_fraction` to go further."
            )

    def _written_layers(self) -> set[str]:
        """Every module a round rewrites: producers, their norms, consumers."""
        return {name for pair in self.pairs for name in (pair.producer, pair.consumer, *pair.norms)}

    def _claim_written(self, trainer: pl.Trainer, pl_module: pl.LightningModule, module: nn.Module) -> None:
        """Claim the structure of everything the pairs rewrite, then check the windows again (before any step)."""
        written = self._written_layers()
        names = [n for n, _ in module.named_parameters() if n.rpartition(".")[0] in written]
        self.claim(pl_module, "structure", names, kind="eliminate")
        self.check_composition(trainer, pl_module)

    def _floor(self, pair: LayerPair) -> int:
        return layer_floor(pair, self.min_neurons, self.min_layer_fraction)

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
