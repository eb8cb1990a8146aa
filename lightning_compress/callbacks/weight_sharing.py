"""WeightSharing callback.

One uniform-bin codebook for the whole network (Khosrowshahli, Rahnamayan, Ombuki-Berman 2025): NSGA-II over the
number of bins, then merging of neighbouring bins, no retraining of the shared values.
"""

from __future__ import annotations

import csv
import gc
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from lightning_compress.arguments import check_bool, check_choice, check_number, check_parameters
from lightning_compress.callbacks.base import CompressionCallback
from lightning_compress.callbacks.events import compression_event
from lightning_compress.functional.forward import call_forward, leading, to_device
from lightning_compress.functional.weight_sharing import (
    Binning,
    SearchPoint,
    WeightSharingProblem,
    choose_codebook,
    entropy_bits,
    huffman_average_length,
    nsga2_search,
    pareto_front,
    select_parameters,
    write_binning,
)

__all__ = ["WeightSharing"]

log = logging.getLogger(__name__)

_METRICS = ("accuracy", "f1_macro")

#: ``max_val_samples="auto"``: the search caches as many validation samples as fit in this many bytes
VAL_CACHE_BYTES = 1 << 30


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


class WeightSharing(CompressionCallback):
    """Share one codebook across the network, chosen on the validation data given to ``fit``.

    Once, at the end of its window (default: the end of ``fit``; ``end=`` a fraction of the fit's optimizer steps, or
    the documented alias ``at_epoch``):

    1. the selected tensors are concatenated; ``k`` equal-width bins between their min and max; empty bins dropped;
       each weight takes the mean of its bin;
    2. NSGA-II (pymoo) searches ``k`` in ``k_bounds`` minimising (validation error, number of shared values), with
       fitness cached per ``k`` and the validation inputs cached in memory; the candidates are screened on the first
       ``screen_samples`` validation samples, and the front solutions near the budget are confirmed on all of them
       (fewest shared values first);
    3. for up to ``merge_candidates`` confirmed solutions within ``accuracy_budget`` (fewest shared values first),
       neighbouring bins are merged while the screened error does not increase; each result is scored on all the
       validation data;
    4. **choice rule**: the solution with the fewest shared values whose validation metric is within
       ``accuracy_budget`` of the unshared model's (if none is, the most accurate one, with a warning).

    The chosen codebook is written into the weights and held there for the rest of the fit; the artifact stores it
    once and the indices ANS-coded (codec ``codebook``). WeightSharing owns the **values** of its tensors. After
    SuccessivePruning (which owns their support) only the non-zeros are binned, zeros stay exactly zero and the
    artifact codes support and indices in one stream (codec ``sparse_codebook``). The Pareto front goes to
    ``<output_dir>/weight_sharing_pareto.{csv,png}`` and, with a W&B logger, to a table and a scatter plot. With
    ``end < 1`` (or ``at_epoch``), training continues and only the unshared tensors (``parameters="weights"``:
    biases and normalisation) keep learning.

    The validation data must be held out from the training set (the datamodules here carve it from train); never
    pass the test set.

    Args:
        k_bounds: inclusive range of the number of bin edges ``k`` searched.
        pop_size: NSGA-II population size (the initial population is evenly spaced over ``k_bounds``).
        n_gen: NSGA-II generations.
        metric: ``"accuracy"`` or ``"f1_macro"`` (the paper's); the error is ``1 - metric``.
        accuracy_budget: allowed drop of the validation metric from the unshared model, as a fraction (0.005 =
            0.5 point).
        parameters: ``"all"`` (every parameter, as in the paper's experiments), ``"weights"`` (Conv/Linear
            weights only) or a list of parameter/module names.
        merge: run the iterative merge.
        merge_candidates: how many front solutions are merged.
        at_epoch: alias of ``end`` in epochs: share at the end of this epoch (0-based) and keep training the rest.
        max_val_samples: cap on the validation samples the search caches and scores candidates on; ``"auto"``
            (default): as many as fit in 1 GiB (all of Fashion-MNIST's or CIFAR's validation split, about 1,700
            ImageNet images); ``None``: the whole validation loader. When the cache holds only part of the
            validation data, the unshared model and the chosen codebook are also scored on all of it (streamed,
            two passes) and a drop over the budget there is reported.
        screen_samples: the search screens candidates on the first this many validation samples and confirms on
            the whole validation data only the front solutions near the budget and the merged ones (``None``: every
            candidate on all of it, as the paper does; also when the validation data is not larger).
        k_focus: when ``k_focus`` bins are already within the budget, NSGA-II searches ``[k_min, k_focus]`` only
            (our design: the choice rule wants the fewest shared values, and most evaluations otherwise go to k in
            the hundreds); ``None``: always all of ``k_bounds``.
        seed: NSGA-II seed.
        output_dir: where the Pareto CSV/PNG go (default: the trainer's log dir).
        progress: show a progress bar over generations (rank 0).
        start: accepted for symmetry with the other callbacks; sharing happens once, at ``end``.
        end: where sharing happens, as a fraction of the fit's optimizer steps (default 1: the end of ``fit``).

    Raises:
        ValueError: for an invalid argument (the message names it).

    Examples:
        >>> cb = WeightSharing(k_bounds=(2, 64), pop_size=8, n_gen=4)
        >>> cb.state_key
        "WeightSharing{'parameters': 'all', 'at_epoch': None}"
    """

    LOG_PREFIX = "weight_sharing"
    ASPECT = "values"
    DEFAULT_WINDOW = (1.0, 1.0)

    def __init__(
        self,
        k_bounds: Sequence[int] = (2, 1024),
        pop_size: int = 32,
        n_gen: int = 20,
        metric: str = "accuracy",
        accuracy_budget: float = 0.005,
        parameters: str | Sequence[str] = "all",
        merge: bool = True,
        merge_candidates: int = 3,
        at_epoch: int | None = None,
        max_val_samples: int | str | None = "auto",
        screen_samples: int | None = 1000,
        k_focus: int | None = 64,
        seed: int = 1,
        output_dir: str | None = None,
        progress: bool = True,
        start: float | None = None,
        end: float | None = None,
    ) -> None:
        super().__init__(start=start, end=end)
        if (
            isinstance(k_bounds, str)
            or not isinstance(k_bounds, Sequence)
            or len(k_bounds) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in k_bounds)
            or not 2 <= k_bounds[0] < k_bounds[1]
        ):
            raise ValueError(f"`k_bounds` must be two ints (k_min, k_max) with 2 <= k_min < k_max, got {k_bounds!r}.")
        bounds = (int(k_bounds[0]), int(k_bounds[1]))
        check_number("pop_size", pop_size, low=2, integer=True)
        check_number("n_gen", n_gen, low=1, integer=True)
        check_number("merge_candidates", merge_candidates, low=0, integer=True)
        check_choice("metric", metric, _METRICS)
        check_number("accuracy_budget", accuracy_budget, low=0, high=1, high_open=True)
        check_parameters("parameters", parameters)
        check_bool("merge", merge)
        check_number("at_epoch", at_epoch, low=0, integer=True, allow_none=True)
        if at_epoch is not None and end is not None:
            raise ValueError("Give `end` (a fraction of the fit) or its alias `at_epoch` (an epoch), not both.")
        if max_val_samples != "auto":
            check_number("max_val_samples", max_val_samples, low=1, integer=True, allow_none=True)
        check_number("screen_samples", screen_samples, low=1, integer=True, allow_none=True)
        check_number("k_focus", k_focus, low=3, integer=True, allow_none=True)
        check_number("seed", seed, low=0, integer=True)
        if output_dir is not None and not isinstance(output_dir, str | os.PathLike):
            raise ValueError(f"`output_dir` must be None or a directory path, got {output_dir!r}.")
        check_bool("progress", progress)
        self.k_bounds = (bounds[0], bounds[1])
        self.pop_size = pop_size
        self.n_gen = n_gen
        self.metric = metric
        self.accuracy_budget = float(accuracy_budget)
        self.parameters = parameters if isinstance(parameters, str) else list(parameters)
        self.merge = merge
        self.merge_candidates = merge_candidates
        self.at_epoch = at_epoch
        self.max_val_samples = max_val_samples
        self.screen_samples = screen_samples
        self.k_focus = k_focus
        self.seed = seed
        self.output_dir = output_dir
        self.progress = progress
        #: the search's points (scored on the screen when there is one) and the ones scored on all validation data
        self.screened: list[SearchPoint] = []
        self.screen_used = False
        self.points: list[SearchPoint] = []
        self._state: dict[str, Any] = {"done": False}
        self._scored_samples = 0  # validation samples run through the model by the search
        self._cache_complete = True  # whether the cached batches are the whole validation loader

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(parameters=str(self.parameters), at_epoch=self.at_epoch)

    @property
    def done(self) -> bool:
        """Whether the codebook has been chosen and applied."""
        return bool(self._state.get("done"))

    # -- hooks -------------------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            names = [n for n, _ in select_parameters(self.target_module(pl_module), self.parameters)]
            self.claim(pl_module, "values", names, kind="codebook")

    @override
    def explicit_window(self, trainer: pl.Trainer | None) -> tuple[float, float] | None:
        epochs = None if trainer is None else trainer.max_epochs
        if self.at_epoch is not None and epochs is not None and epochs > 0:
            # the alias in epochs is a window like any other: composition checks see when sharing happens
            at = min(1.0, (self.at_epoch + 1) / epochs)
            return (at, at)
        return super().explicit_window(trainer)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if self.done:  # resumed after sharing: keep the stored codebook, hold it again
            self._attach(pl_module)
            return
        if self.should_skip(trainer):
            return
        # fail before the first step, not after the whole fit: the search needs (inputs, targets) validation data
        if self._validation_loader(trainer) is None:
            raise ValueError(
                "WeightSharing needs validation data for its fitness: pass `val_dataloaders` (or a datamodule with "
                "val_dataloader) to `trainer.fit`, held out from the training set."
            )
        self._validation_batches(trainer, pl_module, pl_module.device, probe=True)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        at_epoch = self.at_epoch is not None and trainer.current_epoch == self.at_epoch
        if at_epoch and not self.done and not self.should_skip(trainer):
            self.share(trainer, pl_module)

    @override
    def act(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_epoch is None and not self.done and self.window_ended_mid_fit(trainer):
            self.share(trainer, pl_module)

    @override
    def finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.done:  # also when the fit stopped before `at_epoch` (EarlyStopping, max_steps): never left dense
            if self.at_epoch is not None:
                rank_zero_info(
                    f"WeightSharing: the fit ended before epoch {self.at_epoch} (`at_epoch`); sharing at its end."
                )
            self.share(trainer, pl_module)

    @override
    def state_dict(self) -> dict[str, Any]:
        return dict(self._state)

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._state = {"done": False, **state_dict}

    # -- the method --------------------------------------------------------------------------------------------
    @compression_event("search")
    def share(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Search on rank 0, broadcast the chosen codebook and indices, apply them on every rank."""
        module = self.target_module(pl_module)
        rep = self.representation(pl_module)
        names = rep.owned(self.owner, "values")
        params = dict(module.named_parameters())
        selected = [params[n] for n in names]
        # tensors whose support another method owns keep their zeros: only their non-zeros are binned
        keep_zeros = [rep.owner(n, "support") is not None for n in names]
        # the budget is against the unshared accuracy: BatchNorm statistics that lag behind the weights (a short fit,
        # a stage just before) would make that baseline, and every candidate, look worse than they are
        self.recalibrate_norms(trainer, pl_module, self.owner, quiet=True)
        # trainer.log_dir broadcasts: resolve it on every rank, never inside rank-0-only code
        out_dir = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        decision: dict[str, Any] | None = None
        if trainer.is_global_zero:
            decision = self._search(trainer, pl_module, selected, keep_zeros, out_dir)
        decision = self.broadcast(trainer, decision)
        assert decision is not None  # noqa: S101 - broadcast returns rank 0's decision
        binning = Binning(
            codebook=torch.tensor(decision["codebook"], dtype=torch.float64),
            indices=decision["indices"],  # int32: an int64 copy was 2 model sizes
            sums=torch.zeros(0),
            counts=torch.tensor(decision["counts"]),
        )
        write_binning(selected, binning, keep_zeros)
        self._state = {
            "done": True,
            "names": names,
            "keep_zeros": keep_zeros,
            **{k: v for k, v in decision.items() if k != "indices"},
        }
        self._attach(pl_module)
        figures = {
            k: float(decision[k])
            for k in (
                "k",
                "num_shared",
                "baseline_metric",
                "metric",
                "search_s",
                "evaluations",
                "full_evaluations",
                "validation_set_equivalents",
                "entropy_bits",
                "huffman_bits",
                "merged",
            )
        }
        self.log_figures(trainer, figures)
        rank_zero_info(
            f"WeightSharing: {decision['num_shared']} shared values (k={decision['k']}, merged={decision['merged']}"
            f"{', zeros kept' if any(keep_zeros) else ''}), val {self.metric} {decision['metric']:.4f} vs "
            f"{decision['baseline_metric']:.4f} unshared, index entropy {decision['entropy_bits']:.3f} bits, "
            f"{decision['evaluations']} evaluations ({decision['full_evaluations']} on all {decision['val_samples']} "
            f"cached validation samples), {decision['validation_set_equivalents']:.1f} passes over the "
            f"{decision['val_samples_total']} validation samples' worth, in {decision['search_s']:.1f}s."
            + (
                f" On all of them: {decision['metric_all']:.4f} vs {decision['baseline_metric_all']:.4f} unshared."
                if "metric_all" in decision
                else ""
            )
        )

    def _attach(self, pl_module: pl.LightningModule) -> None:
        """Record the codebook in the representation and hold the shared values for the rest of the fit."""
        options = {"codebook": self._state["codebook"], "counts": self._state["counts"]}
        names = list(self._state["names"])
        keep = list(self._state.get("keep_zeros", [False] * len(names)))
        module = self.target_module(pl_module)
        params = dict(module.named_parameters())
        decided = {}
        for name, kept in zip(names, keep, strict=True):
            if not kept and bool((params[name] == 0).any()) and 0.0 not in options["codebook"]:
                # a tensor without a pruned support that holds exact zeros: its codebook lists 0 too
                decided[name] = {"codebook": sorted([*options["codebook"], 0.0])}
            else:
                decided[name] = dict(options)
        self.representation(pl_module).decide(self.owner, "values", decided)
        self.holds.hold_values(self.target_module(pl_module), names)

    @staticmethod
    def _validation_loader(trainer: pl.Trainer) -> Any:
        """The first validation loader given to ``fit`` (also when Lightning skips its own validation loop)."""
        if trainer.limit_val_batches == 0:
            return None
        loaders = trainer.val_dataloaders
        if loaders is None:
            source = getattr(trainer.fit_loop.epoch_loop.val_loop, "_data_source", None)
            loaders = source.dataloader() if source is not None and source.is_defined() else None
        if isinstance(loaders, Sequence) and not isinstance(loaders, torch.utils.data.DataLoader):
            loaders = loaders[0] if loaders else None
        return loaders

    def _validation_batches(
        self, trainer: pl.Trainer, pl_module: nn.Module, device: torch.device, probe: bool = False
    ) -> list[tuple[Any, torch.Tensor]]:
        """The cached validation batches; with ``probe``, only the first, run through the model as a check."""
        loaders = self._validation_loader(trainer)
        if loaders is None:
            raise RuntimeError("WeightSharing: the validation data given to `fit` is gone.")
        batches: list[tuple[Any, torch.Tensor]] = []
        seen = 0
        cap = self.max_val_samples if isinstance(self.max_val_samples, int) else None
        self._cache_complete = True
        to_inputs = self.forward_inputs_fn(pl_module)  # a sequence model's forward may take several arguments
        for batch in loaders:
            if cap is not None and seen >= cap:
                self._cache_complete = False
                break
            if not (
                isinstance(batch, Sequence) and len(batch) >= 2 and all(isinstance(t, torch.Tensor) for t in batch[:2])
            ):
                raise TypeError(
                    "WeightSharing scores candidates by classification on validation batches of the form (inputs, "
                    f"targets); got a {type(batch).__name__}. Give `fit` such validation data."
                )
            x, y = to_device(to_inputs(batch), device), batch[1].to(device)
            if probe:
                self._probe(pl_module, leading(x, 2), y[:2])
                return []
            if self.max_val_samples == "auto" and cap is None:  # the byte bound, from the first batch's size
                cap = max(1, VAL_CACHE_BYTES * len(y) // max(_tensor_bytes((x, y)), 1))
            if cap is not None and len(y) > cap - seen:
                x, y = leading(x, cap - seen), y[: cap - seen]
                self._cache_complete = False
            batches.append((x, y))
            seen += len(y)
        return batches

    @torch.no_grad()
    def _error_on_all(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[float, int]:
        """Error on the whole validation loader, streamed batch by batch (nothing cached); and its sample count."""
        loaders = self._validation_loader(trainer)
        to_inputs = self.forward_inputs_fn(pl_module)
        was_training = pl_module.training
        pl_module.eval()
        preds, targets, num_classes = [], [], 0
        try:
            for batch in loaders:
                logits = call_forward(pl_module, to_device(to_inputs(batch), pl_module.device))
                num_classes = logits.shape[-1]
                preds.append(logits.reshape(-1, num_classes).argmax(dim=1).cpu())
                targets.append(batch[1].reshape(-1).cpu())
        finally:
            pl_module.train(was_training)
        target = torch.cat(targets)
        self._scored_samples += len(target)
        return self._error(torch.cat(preds), target, num_classes), len(target)

    def _error(self, preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> float:
        """``1 - metric`` of predicted classes against targets (the search's error, cached or streamed)."""
        if self.metric == "accuracy":
            return 1.0 - float((preds == targets.to(preds.device)).float().mean())
        from torchmetrics.functional.classification import multiclass_f1_score

        score = multiclass_f1_score(preds, targets.to(preds.device), num_classes=num_classes, average="macro")
        return 1.0 - float(score)

    @staticmethod
    @torch.no_grad()
    def _probe(model: nn.Module, x: Any, y: torch.Tensor) -> None:
        was_training = model.training
        model.eval()
        try:
            logits = call_forward(model, x)
        except Exception as err:
            raise TypeError(
                f"WeightSharing calls the model on validation batches (inputs, targets), and it failed "
                f"({type(err).__name__}: {err}). By default it calls `model(batch[0])`; pass `forward_inputs=` or "
                "define `lc_forward_inputs(self, batch)` on your LightningModule for several inputs."
            ) from err
        finally:
            model.train(was_training)
        if not (isinstance(logits, torch.Tensor) and logits.dim() >= 2 and logits.shape[:-1].numel() == y.numel()):
            raise TypeError(
                "WeightSharing scores candidates by classification: the model must return logits of shape "
                f"(batch, classes), or (..., classes) with one target per row; got "
                f"{getattr(logits, 'shape', type(logits).__name__)} for targets of shape {tuple(y.shape)}."
            )

    def _error_fn(self, model: nn.Module, batches: list[tuple[Any, torch.Tensor]]) -> Any:
        targets = torch.cat([y.reshape(-1) for _, y in batches])
        samples = sum(len(y) for _, y in batches)

        @torch.no_grad()
        def error() -> float:
            self._scored_samples += samples
            was_training = model.training
            model.eval()
            outputs = [call_forward(model, x) for x, _ in batches]
            logits = torch.cat([o.reshape(-1, o.shape[-1]) for o in outputs])
            model.train(was_training)
            return self._error(logits.argmax(dim=1), targets, logits.shape[1])

        return error

    def _search(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        params: list[nn.Parameter],
        keep_zeros: list[bool],
        out_dir: Path,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        self._scored_samples = 0
        batches = self._validation_batches(trainer, pl_module, pl_module.device)
        screen = self._screen_batches(batches)
        problem = WeightSharingProblem(
            params,
            self._error_fn(pl_module, batches),
            keep_zeros,
            screen_fn=self._error_fn(pl_module, screen) if screen else None,
        )
        with self._progress_bar(self.n_gen) as advance:
            k_min, k_max = self.k_bounds

            def explore(evaluate: Callable[[int], SearchPoint], k_focus: int | None) -> None:
                bounds = (k_min, min(k_max, k_focus)) if k_focus is not None else (k_min, k_max)
                nsga2_search(evaluate, bounds, self.pop_size, self.n_gen, self.seed, advance)

            result = choose_codebook(
                problem,
                explore,
                accuracy_budget=self.accuracy_budget,
                merge_candidates=self.merge_candidates if self.merge else 0,
                focus_k=self.k_focus if self.k_focus is not None and k_min < self.k_focus < k_max else None,
            )
        self.screened, self.points, self.screen_used = result.screened, result.points, result.screen_used
        baseline_error, chosen, binning = result.baseline_error, result.chosen, result.binning
        if not result.within_budget:
            rank_zero_warn(
                f"WeightSharing: no solution within accuracy_budget={self.accuracy_budget}; using the most accurate "
                f"one ({chosen.num_shared} shared values). Raise k_bounds[1] or the budget."
            )
        if any(keep_zeros) and bool((binning.codebook == 0).any()):
            # a bin whose mean is exactly 0 would turn kept weights into pruned ones: nudge it off zero
            nudged = binning.codebook.clone()
            nudged[nudged == 0] = float(torch.finfo(torch.float32).tiny)
            binning = Binning(nudged, binning.indices, binning.sums, binning.counts)
        cached = sum(len(y) for _, y in batches)
        total, on_all = cached, None
        if not self._cache_complete:
            # the candidates were judged on a bounded part of the validation data: check the choice on all of it
            problem.restore()
            baseline_all, total = self._error_on_all(trainer, pl_module)
            problem.write(binning)
            chosen_all, _ = self._error_on_all(trainer, pl_module)
            problem.restore()
            on_all = {"baseline_metric_all": 1.0 - baseline_all, "metric_all": 1.0 - chosen_all}
            if chosen_all - baseline_all > self.accuracy_budget:
                rank_zero_warn(
                    f"WeightSharing: the codebook chosen on {cached} cached validation samples is "
                    f"{chosen_all - baseline_all:.4f} below the unshared model on all {total} (accuracy_budget="
                    f"{self.accuracy_budget}). Raise `max_val_samples` (or set it to None) to choose on more data."
                )
        codebook = binning.codebook.float()
        self._write_outputs(trainer, out_dir, baseline_error, chosen)
        return {
            "k": chosen.k,
            "num_shared": binning.num_shared,
            "merged": chosen.merged,
            "codebook": codebook.tolist(),
            "counts": binning.counts.tolist(),
            "indices": binning.indices.to(torch.int32),
            "baseline_metric": 1.0 - baseline_error,
            "metric": 1.0 - chosen.error,
            "evaluations": problem.evaluations,
            "full_evaluations": problem.full_evaluations,
            "search_s": time.perf_counter() - started,
            "entropy_bits": entropy_bits(binning.counts),
            "huffman_bits": huffman_average_length(binning.counts),
            "val_samples": cached,
            "val_samples_total": total,
            "screen_samples": sum(len(y) for _, y in screen),
            # the search's cost in passes over the whole validation data
            "validation_set_equivalents": self._scored_samples / max(total, 1),
            **(on_all or {}),
        }

    def _screen_batches(self, batches: list[tuple[Any, torch.Tensor]]) -> list[tuple[Any, torch.Tensor]]:
        """The first ``screen_samples`` validation samples; none when screening is off or would not be smaller."""
        total = sum(len(y) for _, y in batches)
        if self.screen_samples is None or total <= self.screen_samples:
            return []
        screen, seen = [], 0
        for x, y in batches:
            take = min(len(y), self.screen_samples - seen)
            screen.append((leading(x, take), y[:take]))
            seen += take
            if seen >= self.screen_samples:
                break
        return screen

    def _progress_bar(self, total: int) -> Any:
        from contextlib import contextmanager

        @contextmanager
        def bar() -> Any:
            if not self.progress:
                yield None
                return
            from rich.progress import Progress

            with Progress(transient=True) as progress:
                task = progress.add_task("WeightSharing NSGA-II generations", total=total)
                yield lambda gen: progress.update(task, completed=gen)

        return bar()

    def _write_outputs(self, trainer: pl.Trainer, out: Path, baseline_error: float, chosen: SearchPoint) -> None:
        out.mkdir(parents=True, exist_ok=True)
        label = "screen" if self.screen_used else "validation"
        front = set(pareto_front(self.screened))
        scored = [(p, label) for p in self.screened]
        scored += [(p, "validation") for p in self.points if self.screen_used or p.merged]
        rows = [
            {
                "k": p.k,
                "num_shared": p.num_shared,
                "val_error": round(p.error, 6),
                f"val_{self.metric}": round(1.0 - p.error, 6),
                "scored_on": on,
                "merged": p.merged,
                "on_front": (on == label and p in front) or p.merged,
                "chosen": p == chosen and on == "validation",
            }
            for p, on in sorted(scored, key=lambda t: (t[1], t[0].merged, t[0].num_shared, t[0].k))
        ]
        csv_path = out / "weight_sharing_pareto.csv"
        tmp = csv_path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(csv_path)
        self._plot(out / "weight_sharing_pareto.png", front, baseline_error, chosen)
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                import wandb

                columns: list[str | int] = list(rows[0])
                table = wandb.Table(columns=columns, data=[[r[str(c)] for c in columns] for r in rows])
                logger.experiment.log(  # type: ignore[attr-defined]
                    {
                        "weight_sharing/pareto": table,
                        "weight_sharing/pareto_plot": wandb.plot.scatter(
                            table, "num_shared", f"val_{self.metric}", title="WeightSharing Pareto front"
                        ),
                    }
                )

    def _plot(self, path: Path, front: set[SearchPoint], baseline_error: float, chosen: SearchPoint) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        label = "screened" if self.screen_used else "evaluated"
        searched = self.screened
        ax.scatter([p.num_shared for p in searched], [1 - p.error for p in searched], s=8, c="0.7", label=label)
        line = sorted(front, key=lambda p: p.num_shared)
        ax.plot([p.num_shared for p in line], [1 - p.error for p in line], "o-", ms=4, label=f"Pareto front ({label})")
        if self.screen_used:
            confirmed = [p for p in self.points if not p.merged]
            ax.scatter(
                [p.num_shared for p in confirmed],
                [1 - p.error for p in confirmed],
                marker="x",
                c="tab:blue",
                label="confirmed on all validation data",
            )
        merged = [p for p in self.points if p.merged]
        if merged:
            ax.scatter([p.num_shared for p in merged], [1 - p.error for p in merged], c="tab:red", s=30, label="merged")
        ax.scatter([chosen.num_shared], [1 - chosen.error], marker="*", s=200, c="gold", edgecolors="k", label="chosen")
        ax.axhline(1 - baseline_error, color="k", ls="--", lw=1, label="unshared")
        ax.set_xscale("log")
        ax.set_xlabel("shared values")
        ax.set_ylabel(f"validation {self.metric}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        tmp = path.with_suffix(".tmp.png")
        fig.savefig(tmp, dpi=120)
        plt.close(fig)
        tmp.replace(path)
        # matplotlib's drawing leaves frames of its own in reference cycles, and each keeps its callers' frames alive
        # through `f_back`: the search's and `share`'s, with the problem's values and the chosen binning's indices
        # (on ViT-B/16 1.4 GB, held for the rest of the fit unless the cyclic collector happens to run)
        gc.collect()
