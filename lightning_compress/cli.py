"""The ``lcompress`` command: train a zoo model on a datamodule with optional compression callbacks (Hydra).

``lcompress`` trains the dense LeNet-300-100 baseline on Fashion-MNIST; ``lcompress recipe=NAME`` runs a recipe;
``lcompress -m ...`` runs sweeps. After ``fit`` it tests the final weights, writes the artifact, prints the size
report, reloads the artifact and re-measures test accuracy from it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from lightning_compress.callbacks.artifact import ArtifactWriter
from lightning_compress.callbacks.base import CompressionCallback
from lightning_compress.module import evaluate_accuracy
from lightning_compress.report import size_report
from lightning_compress.saving import load
from lightning_compress.sweep import dense_reference, sweep_group
from lightning_compress.tracking import finish_wandb, go_offline_without_key, log_artifact_to_wandb

__all__ = ["entry", "instantiate_children", "main", "report_command", "train"]

log = logging.getLogger(__name__)


def instantiate_children(node: DictConfig | None) -> list[Any]:
    """Instantiate every child of ``node`` that has a ``_target_`` (callbacks, loggers, compression methods)."""
    if not node:
        return []
    if not isinstance(node, DictConfig):
        raise TypeError(f"Expected a mapping of configs with `_target_`, got {type(node).__name__}.")
    return [instantiate(child) for child in node.values() if isinstance(child, DictConfig) and "_target_" in child]


def _prepare_wandb(cfg: DictConfig) -> None:
    """Group a sweep's runs and go offline (in one line) when W&B is the logger and there is no API key."""
    if not cfg.get("logger") or "wandb" not in cfg.logger:
        return
    if _in_multirun() and cfg.logger.wandb.get("group") is None:
        # the jobs of one sweep share a W&B group, where the sweep summary's scatter also goes (SweepSummary)
        cfg.logger.wandb.group = sweep_group(cfg.task_name, HydraConfig.get().sweep.dir)
    go_offline_without_key(cfg.paths.output_dir)


class SpawnedProcessGroupTeardown(pl.Callback):
    """Destroy the process group at the end of every stage run in spawned processes (``ddp_spawn``).

    Each stage (fit, then test) spawns fresh worker processes. Left to the interpreter's exit, the gloo process
    group was torn down while its threads still ran, and a worker could die with SIGABRT ("terminate called without
    an active exception") after a green stage. Here every rank meets at a barrier and destroys it while the
    interpreter is still whole; nothing after the ``teardown`` hook in a worker uses collectives.
    """

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        import torch.distributed as dist

        spawned = type(getattr(trainer.strategy, "launcher", None)).__name__ == "_MultiProcessingLauncher"
        if spawned and dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def train(cfg: DictConfig, extra_callbacks: Sequence[pl.Callback] = ()) -> tuple[dict[str, float], dict[str, Any]]:
    """Run one experiment described by a composed config.

    Args:
        cfg: the composed ``train`` config.
        extra_callbacks: Python-built callbacks added after the configured ones (before the artifact writer).

    Returns:
        ``(metrics, objects)``: every logged metric plus ``fit/wall_s``, ``test/acc_artifact`` and the ``size/...``
        totals; and the datamodule, module, trainer and artifact path.
    """
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model_overrides = {
        k: v
        for k, v in {"num_classes": datamodule.num_classes, "in_shape": list(datamodule.dims)}.items()
        if cfg.model.get(k) is None
    }
    backbone = instantiate(cfg.model, **model_overrides)
    module = instantiate(
        cfg.module,
        backbone=backbone,
        num_classes=datamodule.num_classes,
        optimizer=cfg.get("optimizer") or None,
        scheduler=cfg.get("scheduler") or None,
    )
    callbacks = [
        *instantiate_children(cfg.get("callbacks")),
        # before the compression callbacks: its teacher is taken before an event of the same step
        *([instantiate(cfg.distillation)] if cfg.get("distill") else []),
        *instantiate_children(cfg.get("compress")),
        *extra_callbacks,
        SpawnedProcessGroupTeardown(),
    ]
    writer = None
    if cfg.artifact.save:  # last, so it sees every compression callback's result
        writer = ArtifactWriter(
            Path(cfg.paths.output_dir) / cfg.artifact.name,
            precision=cfg.artifact.precision,
            metric_prefixes=list(cfg.artifact.get("metric_prefixes", ["val"])),
            metadata={"task_name": cfg.task_name, "tags": list(cfg.tags)},
        )
        callbacks.append(writer)
    _prepare_wandb(cfg)
    loggers: list[Logger] = instantiate_children(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if loggers:
        hparams = {str(k): v for k, v in OmegaConf.to_container(cfg, resolve=True).items()}  # type: ignore[union-attr]
        for lg in loggers:
            lg.log_hyperparams(hparams)

    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics: dict[str, float] = {"fit/wall_s": time.perf_counter() - started}
    metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    for callback in callbacks:
        if isinstance(callback, CompressionCallback):
            metrics.update(callback.summary())
    if cfg.get("test"):
        trainer.test(module, datamodule=datamodule, verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    artifact_path: Path | None = None
    if writer is not None and trainer.is_global_zero:
        artifact_path = writer.resolved_path(trainer)
        report = size_report(artifact_path)
        report.print(Console())
        picture = report.plot(artifact_path.with_suffix(".png"))  # a picture of the run, next to its artifact
        metrics.update(report.summary())
        if cfg.artifact.verify and cfg.get("test"):
            datamodule.setup("test")
            # the same batches Lightning tested (limit_test_batches), on one process
            tested = trainer.num_test_batches[0] if trainer.world_size == 1 and trainer.num_test_batches else None
            max_batches = int(tested) if tested is not None and math.isfinite(tested) else None
            metrics["test/acc_artifact"] = evaluate_accuracy(
                load(artifact_path), datamodule.test_dataloader(), max_batches=max_batches
            )
            log.info(
                "Artifact %s: %d bytes, ratio %.2fx, test/acc %.4f (reloaded from file: %.4f)",
                artifact_path,
                report.artifact_bytes,
                report.ratio,
                metrics.get("test/acc", math.nan),
                metrics["test/acc_artifact"],
            )
        _compare_with_reference(cfg, metrics)
        for lg in loggers:
            if "test/acc_artifact" in metrics:
                lg.log_metrics({"test/acc_artifact": metrics["test/acc_artifact"]})
        for lg in loggers:
            if type(lg).__name__ == "WandbLogger":
                log_artifact_to_wandb(lg, artifact_path, metrics, cfg.task_name)
                lg.log_image(key="size/report_png", images=[str(picture)])  # type: ignore[attr-defined]
        report.log_to(loggers)  # also flushes the loggers
    objects = {"datamodule": datamodule, "module": module, "trainer": trainer, "artifact_path": artifact_path}
    return metrics, objects


def _compare_with_reference(cfg: DictConfig, metrics: dict[str, float]) -> None:
    """Print this run next to the dense reference a committed benchmark measured (``reference.file``/``.net``).

    The dense reference is read, not trained again: the best dense run of this run's seed when the benchmark has
    that seed (its drops are taken against it), else the mean over the benchmark's seeds of each seed's best.
    """
    reference = cfg.get("reference") or {}
    file, net = reference.get("file"), reference.get("net")
    if not file or "test/acc_artifact" not in metrics:
        return
    data = str((cfg.get("data") or {}).get("_target_", "")).rpartition(".")[2]
    model = str((cfg.get("model") or {}).get("name", ""))
    measured = (reference.get("datamodule"), reference.get("model"))
    if measured != (data, model):
        log.info(
            "Dense reference: none for this run. %s holds dense runs of %s with %s; this run trains %s with %s. "
            "Train the dense recipe with the same data and network to compare (e.g. compress=[] on this command).",
            file,
            measured[1] or "an undeclared network",
            measured[0] or "undeclared data",
            model or "a model outside the zoo",
            data or "a data module outside the library",
        )
        return
    seed = cfg.get("seed")
    seed_files = [str(f) for f in reference.get("seed_files") or []]
    found = dense_reference(file, str(net), seed if isinstance(seed, int) else None, seed_files)
    if found is None:
        log.warning(
            "Dense reference: %s is missing or holds no %r dense run; `python -m bench.composed_fmnist` measures it.",
            file,
            net,
        )
        return
    dense, seeds, same_seed = found
    metrics["reference/dense_acc"] = dense
    drop = 100 * (dense - metrics["test/acc_artifact"])
    which = (
        f"the best of its dense runs of seed {seed}, this run's"
        if same_seed
        else f"the best of its dense runs per seed, mean of {seeds} seeds"
    )
    log.info(
        "Dense reference (read from %s, not trained in this job: %s): test/acc %.4f. This run, reloaded from its "
        "artifact: %.4f, %.1fx smaller than fp32, a drop of %.2f pt.",
        " and ".join([str(file), *seed_files]) if same_seed and seed_files else file,
        which,
        dense,
        metrics["test/acc_artifact"],
        metrics.get("size/ratio", math.nan),
        drop,
    )


def metric_value(metrics: Mapping[str, float], name: str | Sequence[str] | None) -> float | tuple[float, ...] | None:
    """The metric a sweeper optimises, or a tuple of them (a multi-objective search, e.g. bytes and accuracy).

    Raises:
        KeyError: naming the missing metric and listing the available ones.
    """
    if not name:
        return None
    if not isinstance(name, str):
        return tuple(_one_metric(metrics, str(n)) for n in name)
    return _one_metric(metrics, name)


def _one_metric(metrics: Mapping[str, float], name: str) -> float:
    if name not in metrics:
        raise KeyError(f"`optimized_metric` {name!r} was not logged; available: {sorted(metrics)}.")
    return float(metrics[name])


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | tuple[float, ...] | None:
    """Entry point of ``lcompress``; returns ``cfg.optimized_metric`` for sweepers."""
    try:
        metrics, _ = train(cfg)
    except Exception as err:
        _write_job_metrics(cfg, {}, f"failed: {type(err).__name__}: {err}")
        if not _in_multirun():
            raise
        # One failed job must not end the sweep (Hydra's sweepers stop at the first exception): it becomes a failed
        # row of the sweep summary and a NaN objective, which Optuna records as a failed trial.
        log.exception("Job failed; the sweep goes on (see the `failed` row of sweep_summary.csv).")
        name = cfg.get("optimized_metric")
        return None if not name else (math.nan if isinstance(name, str) else tuple(math.nan for _ in name))
    finally:
        finish_wandb()
    _write_job_metrics(cfg, metrics, "ok")
    return metric_value(metrics, cfg.get("optimized_metric"))


def report_command(argv: Sequence[str]) -> int:
    """``lcompress report PATH [--png [OUT]] [--json]``: the size report of any artifact, read from the file.

    Prints the table; ``--png`` also writes its picture (default: the artifact's path with ``.png``), ``--json`` the
    report as JSON on standard output instead of the table. Returns the exit status.

    Examples:
        >>> import tempfile, torch, lightning_compress as lc
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = lc.save(torch.nn.Linear(4, 2), f"{d}/net.lcz")
        ...     status = report_command([str(path), "--json"])  # doctest: +ELLIPSIS
        {...}
        >>> status
        0
    """
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="lcompress report", description="The size report of an artifact.")
    parser.add_argument("path", help="an artifact written by lc.save (.lcz)")
    parser.add_argument("--png", nargs="?", const="", default=None, help="write the report's picture (PNG)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    args = parser.parse_args(list(argv))
    path = Path(args.path)
    if not path.is_file():
        parser.error(f"{str(path)!r} is not a file: give the path of an artifact written by lc.save (.lcz).")
    report = size_report(path)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        report.print(Console())
    if args.png is not None:
        picture = report.plot(Path(args.png) if args.png else path.with_suffix(".png"))
        if not args.json:
            Console().print(f"picture: {picture}")
    return 0


def entry() -> None:
    """The ``lcompress`` command: ``lcompress report ...`` reads an artifact; anything else is a Hydra training job."""
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "report":
        raise SystemExit(report_command(sys.argv[2:]))
    main()


def _in_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # not under Hydra
        return False


def _write_job_metrics(cfg: DictConfig, metrics: Mapping[str, float], status: str) -> None:
    """``job_metrics.json`` in the job's output dir: what the sweep summary (:mod:`lightning_compress.sweep`) reads."""
    import json

    from lightning_compress.sweep import JOB_METRICS

    try:
        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:  # not under Hydra (train() called directly)
        overrides = []
    out = Path(str(cfg.paths.output_dir))
    out.mkdir(parents=True, exist_ok=True)
    finite = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
    payload = {"status": "ok" if status == "ok" else "failed", "error": None if status == "ok" else status}
    (out / JOB_METRICS).write_text(json.dumps({**payload, "overrides": overrides, "metrics": finite}, indent=1))


if __name__ == "__main__":
    main()
