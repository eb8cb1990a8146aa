"""Weights & Biases for runs and sweeps: offline without an API key, the artifact as a model, a sweep's scatter.

Nothing here needs a network: without ``WANDB_API_KEY`` or a ``wandb login`` the runs are written offline (upload
them later with ``wandb sync``); ``WANDB_MODE=disabled`` turns W&B off.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "finish_wandb",
    "go_offline_without_key",
    "log_artifact_to_wandb",
    "log_front_to_wandb",
    "log_sweep_to_wandb",
]

log = logging.getLogger(__name__)

#: Figures copied into a model artifact's metadata.
ARTIFACT_METADATA_KEYS = (
    "size/artifact_bytes",
    "size/ratio",
    "size/params",
    "test/acc",
    "test/acc_artifact",
    "val/acc",
)


def _has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", "~/.netrc")).expanduser()
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def go_offline_without_key(where: str | Path) -> None:
    """Set ``WANDB_MODE=offline`` (and say so in one line) when no mode is set and there is no API key.

    W&B would otherwise prompt for a key, which blocks a batch job.
    """
    if os.environ.get("WANDB_MODE") or _has_credentials():
        return
    os.environ["WANDB_MODE"] = "offline"
    log.info("W&B: no API key found, logging offline to %s/wandb (upload later with `wandb sync`).", where)


def finish_wandb() -> None:
    """Finish the current W&B run, if any (no import of wandb when it was never used)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def log_artifact_to_wandb(logger: Any, path: Path, metrics: Mapping[str, float], task_name: str) -> None:
    """Log the ``.lcz`` file and the metadata beside it as a W&B ``model`` artifact, size and accuracy as metadata."""
    import wandb

    metadata = {k: float(metrics[k]) for k in ARTIFACT_METADATA_KEYS if k in metrics}
    artifact = wandb.Artifact(name=f"{task_name}-model", type="model", metadata=metadata)
    artifact.add_file(str(path), name=path.name)
    beside = path.with_suffix(".json")  # ArtifactWriter's metadata, written beside the file
    if beside.is_file():
        artifact.add_file(str(beside), name=beside.name)
    logger.experiment.log_artifact(artifact, aliases=["latest"])


def log_sweep_to_wandb(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    png: Path | None,
    *,
    project: str,
    group: str,
    save_dir: Path,
) -> Path | None:
    """One W&B run for a finished sweep: its summary table, a bytes-accuracy scatter and the summary PNG.

    The run joins the sweep's ``group`` (the jobs' runs share it), so the W&B project shows the sweep's jobs and
    their picture together. Returns the run's local directory, or ``None`` when W&B is disabled.
    """
    if os.environ.get("WANDB_MODE") == "disabled":
        return None
    import wandb

    go_offline_without_key(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=project,
        group=group,
        job_type="sweep-summary",
        name=f"{group}-summary",
        dir=str(save_dir),
        # explicit, because a wandb set up earlier in this process keeps the mode it was set up with
        mode="offline" if os.environ.get("WANDB_MODE") == "offline" else "online",
    )
    try:
        table = wandb.Table(columns=list(columns), data=[[_cell(row.get(c)) for c in columns] for row in rows])
        scored = [r for r in rows if r.get("status") == "ok" and r.get("artifact_bytes") and r.get("artifact_acc")]
        points = wandb.Table(
            columns=["artifact_bytes", "artifact_acc", "pareto", "job"],
            data=[[float(r["artifact_bytes"]), float(r["artifact_acc"]), bool(r["pareto"]), r["job"]] for r in scored],
        )
        logged: dict[str, Any] = {
            "sweep/summary": table,
            "sweep/bytes_vs_acc": wandb.plot.scatter(
                points, "artifact_bytes", "artifact_acc", title="artifact bytes vs test accuracy"
            ),
        }
        if png is not None and png.is_file():
            logged["sweep/front"] = wandb.Image(str(png))
        run.log(logged)
        return Path(run.dir).parent
    finally:
        run.finish()


def _cell(value: Any) -> Any:
    """A table cell: numbers and flags stay as they are, a missing or non-finite figure is empty, the rest is text."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return value if isinstance(value, (bool, int, float)) else str(value)


def log_front_to_wandb(
    loggers: Sequence[Any], rows: Sequence[Mapping[str, Any]], prefix: str, axes: tuple[str, str], title: str
) -> None:
    """A Pareto front's rows as a W&B table and a scatter (``axes``: x and y columns), to each W&B logger given.

    Logged as ``<prefix>/pareto`` and ``<prefix>/pareto_plot``.
    """
    for logger in loggers:
        if type(logger).__name__ != "WandbLogger" or not rows:
            continue
        import wandb

        columns: list[str | int] = list(rows[0])
        table = wandb.Table(columns=columns, data=[[r[str(c)] for c in columns] for r in rows])
        plot = wandb.plot.scatter(table, *axes, title=title)
        logger.experiment.log({f"{prefix}/pareto": table, f"{prefix}/pareto_plot": plot})
