"""The WeightSharing callback: its arguments, when it shares, the search's bookkeeping and the codebook's hold.

One uniform-bin codebook for the whole network (Khosrowshahli, Rahnamayan, Ombuki-Berman 2025): NSGA-II over the
number of bins, then merging of neighbouring bins, no retraining of the shared values. The search is in
``functional.weight_sharing``, the scoring in ``callbacks.validation``, the front's CSV and picture in ``report``,
its W&B table in ``tracking``.
"""

from __future__ import annotations

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

from lightning_compress.arguments import check_bool, check_choice, check_int_range, check_number, check_parameters
from lightning_compress.callbacks.base import CompressionCallback
from lightning_compress.callbacks.events import compression_event, progress_bar, spending
from lightning_compress.callbacks.validation import METRICS, ValidationScorer, validation_loader
from lightning_compress.functional.weight_sharing import (
    Binning,
    SearchBudget,
    SearchPoint,
    WeightSharingProblem,
    choose_codebook,
    entropy_bits,
    huffman_average_length,
    nsga2_search,
    select_parameters,
    write_binning,
)
from lightning_compress.report import write_sharing_front
from lightning_compress.tracking import log_front_to_wandb

__all__ = ["WeightSharing"]

#: The search's figures logged (the rest of its decision is in the checkpoint's state and the closing line).
_LOGGED: tuple[str, ...] = ("k", "num_shared", "baseline_metric", "metric", "search_s", "evaluations")
_LOGGED += ("full_evaluations", "validation_set_equivalents", "entropy_bits", "huffman_bits", "merged")


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
        search_budget: the most the search may spend, in passes over the cached validation samples (a candidate
            scored on all of them costs one pass, a screened one its share); the unshared model's scores are always
            paid. The exploration gets 40% of it; then one candidate (not ``merge_candidates``) is confirmed and
            merged. When the budget ends, the best candidate found within ``accuracy_budget`` is kept and one line
            says where the search stopped. ``None``: unbounded (the search before this bound).
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
        search_budget: float | None = 20.0,
        seed: int = 1,
        output_dir: str | None = None,
        progress: bool = True,
        start: float | None = None,
        end: float | None = None,
    ) -> None:
        super().__init__(start=start, end=end)
        self.k_bounds = check_int_range("k_bounds", k_bounds, low=2, parts=("k_min", "k_max"))
        check_number("pop_size", pop_size, low=2, integer=True)
        check_number("n_gen", n_gen, low=1, integer=True)
        check_number("merge_candidates", merge_candidates, low=0, integer=True)
        check_choice("metric", metric, METRICS)
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
        check_number("search_budget", search_budget, low=3, allow_none=True)
        check_number("seed", seed, low=0, integer=True)
        if output_dir is not None and not isinstance(output_dir, str | os.PathLike):
            raise ValueError(f"`output_dir` must be None or a directory path, got {output_dir!r}.")
        check_bool("progress", progress)
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
        self.search_budget = None if search_budget is None else float(search_budget)
        self.seed = seed
        self.output_dir = output_dir
        self.progress = progress
        #: the search's points (scored on the screen when there is one) and the ones scored on all validation data
        self.screened: list[SearchPoint] = []
        self.screen_used = False
        self.points: list[SearchPoint] = []
        self._state: dict[str, Any] = {"done": False}
        #: the validation samples candidates are scored on, and how many the search ran through the model
        self.scorer = ValidationScorer(self.owner, self.metric, self.max_val_samples)

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
    def planned_events(self, window: tuple[float, float], steps: tuple[int, int] | None) -> str:
        when = f"at step {steps[1]}" if steps is not None else f"at {window[1]:g} of the fit"
        when = "at the end of the fit" if window[1] == 1.0 else when
        if self.at_epoch is not None:
            when = f"at epoch {self.at_epoch}"
        return f"NSGA-II search ({self.pop_size}x{self.n_gen}) {when}"

    @override
    def guard_summary(self) -> str:
        return f"searched within {self.accuracy_budget:g} of the unshared {self.metric}"

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
        if validation_loader(trainer) is None:
            raise ValueError(
                "WeightSharing needs validation data for its fitness: pass `val_dataloaders` (or a datamodule with "
                "val_dataloader) to `trainer.fit`, held out from the training set."
            )
        self.scorer.batches(trainer, pl_module, self.forward_inputs_fn(pl_module), pl_module.device, probe=True)

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
        figures = {k: float(decision[k]) for k in _LOGGED}
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

    def _search(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        params: list[nn.Parameter],
        keep_zeros: list[bool],
        out_dir: Path,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        self.scorer.reset()
        batches = self.scorer.batches(trainer, pl_module, self.forward_inputs_fn(pl_module), pl_module.device)
        screen = self.scorer.leading_samples(batches, self.screen_samples)
        cached = sum(len(y) for _, y in batches)
        budget = (
            SearchBudget(self.search_budget, screen_cost=sum(len(y) for _, y in screen) / max(cached, 1))
            if self.search_budget is not None
            else None
        )
        problem = WeightSharingProblem(
            params,
            self.scorer.error_fn(pl_module, batches),
            keep_zeros,
            screen_fn=self.scorer.error_fn(pl_module, screen) if screen else None,
            budget=budget,
        )
        with progress_bar(
            "WeightSharing NSGA-II generations", self.n_gen, self.progress, spending(budget, started)
        ) as advance:
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
        if result.search_ended is not None and budget is not None:
            front = max((p.k for p in result.screened), default=0)
            rank_zero_info(
                f"WeightSharing: the search budget ({budget.total:g} passes over the {cached} cached validation "
                f"samples) ended the search while {result.search_ended}, after {problem.evaluations} candidates "
                f"(k up to {front} explored); it keeps the best found within accuracy_budget={self.accuracy_budget}."
            )
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
        total, on_all = cached, None
        if not self.scorer.cache_complete:
            # the candidates were judged on a bounded part of the validation data: check the choice on all of it
            problem.restore()
            baseline_all, total = self.scorer.error_on_all(trainer, pl_module, self.forward_inputs_fn(pl_module))
            problem.write(binning)
            chosen_all, _ = self.scorer.error_on_all(trainer, pl_module, self.forward_inputs_fn(pl_module))
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
            "validation_set_equivalents": self.scorer.scored_samples / max(total, 1),
            **(on_all or {}),
        }

    def _write_outputs(self, trainer: pl.Trainer, out: Path, baseline_error: float, chosen: SearchPoint) -> None:
        rows = write_sharing_front(
            out, self.screened, self.points, self.screen_used, self.metric, baseline_error, chosen
        )
        axes = ("num_shared", f"val_{self.metric}")
        log_front_to_wandb(trainer.loggers, rows, self.LOG_PREFIX, axes, "WeightSharing Pareto front")
