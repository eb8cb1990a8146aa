"""Sweep summary: after a Hydra multirun, one table and one picture of bytes on disk against accuracy.

Every ``lcompress`` job writes ``job_metrics.json`` into its output directory (its overrides, status and figures).
:class:`SweepSummary`, a Hydra callback registered in ``conf/train.yaml``, reads them all when the multirun ends and
writes into the sweep directory:

* ``sweep_summary.csv``: one row per job (overrides, test accuracy, reloaded-artifact accuracy, artifact bytes, ratio,
  fit wall time, whether it is Pareto-optimal); a failed job is a row with ``status=failed``;
* ``sweep_summary.png``: artifact bytes (log axis) against test accuracy, the Pareto points marked and joined;
* a rich table of the Pareto points in the terminal.

It reads files only, so it works with any launcher (basic, Optuna, submitit) whose jobs share the sweep directory.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

__all__ = ["JOB_METRICS", "SweepSummary", "dense_reference", "pareto_mask", "summarise_sweep", "sweep_group"]

log = logging.getLogger(__name__)

#: File every job writes into its output directory.
JOB_METRICS = "job_metrics.json"
_COLUMNS = ("job", "status", "overrides", "test_acc", "artifact_acc", "artifact_bytes", "ratio", "fit_wall_s", "pareto")


def pareto_mask(sizes: Sequence[float], accuracies: Sequence[float]) -> list[bool]:
    """Which points no other point beats (smaller or equal size and higher or equal accuracy, one strictly).

    Examples:
        >>> pareto_mask([10, 20, 30, 15], [0.8, 0.9, 0.85, 0.7])
        [True, True, False, False]
    """
    points = list(zip(sizes, accuracies, strict=True))
    return [
        not any((s2 <= s and a2 >= a) and (s2 < s or a2 > a) for j, (s2, a2) in enumerate(points) if j != i)
        for i, (s, a) in enumerate(points)
    ]


def sweep_group(task_name: str, sweep_dir: str | Path) -> str:
    """The W&B group of a sweep's runs and of its summary: the task name and the sweep directory's name.

    Examples:
        >>> sweep_group("train", "outputs/train/multiruns/2026-11-30_01-40-00")
        'train-2026-11-30_01-40-00'
    """
    return f"{task_name}-{Path(str(sweep_dir)).name}"


def dense_reference(
    file: str | Path, net: str, seed: int | None = None, seed_files: Sequence[str | Path] = ()
) -> tuple[float, int, bool] | None:
    """The dense test accuracy a benchmark measured for ``net``, over how many seeds, and whether it is ``seed``'s.

    ``file`` is a benchmark result (``{"runs": [{"seed": ..., "<net>/dense@<lr>": {"acc": ...}, ...}, ...]}``, one
    entry per seed); the reference is the best dense run of ``seed`` when the file holds that seed (over 1 seed),
    else the mean over seeds of each seed's best dense run. ``seed_files`` are results of dense runs of ``net`` per
    seed (``{"runs": [{"seed": ..., "acc": ...}, ...]}``, e.g. ``bench.full_lenet300_seeds --recipe
    dense_lenet300_fmnist``): their runs of ``seed`` count as that seed's dense runs too (the mean over seeds stays
    ``file``'s). ``None`` when the file is missing or holds no dense run of ``net``.

    Examples:
        >>> import json, tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "b.json").write_text(json.dumps({"runs": [{"seed": 0, "mlp/dense@0.1": {"acc": 0.9}}]}))
        >>> _ = (folder / "s.json").write_text(json.dumps({"runs": [{"seed": 42, "acc": 0.8}]}))
        >>> dense_reference(folder / "b.json", "mlp", 42)  # no run of seed 42: the mean over the file's seeds
        (0.9, 1, False)
        >>> dense_reference(folder / "b.json", "mlp", 42, [folder / "s.json"])  # seed 42's own dense run
        (0.8, 1, True)
    """
    path = Path(str(file))
    if not path.is_file():
        return None
    runs = json.loads(path.read_text())["runs"]
    if seed is not None:
        same = [run for run in runs if run.get("seed") == seed]
        accs = [v["acc"] for run in same for k, v in run.items() if k.startswith(f"{net}/dense@")]
        for extra in (Path(str(f)) for f in seed_files):
            if extra.is_file():
                accs += [float(run["acc"]) for run in json.loads(extra.read_text())["runs"] if run.get("seed") == seed]
        if accs:
            return max(accs), 1, True
    per_seed = [[v["acc"] for k, v in run.items() if k.startswith(f"{net}/dense@")] for run in runs]
    best = [max(accs) for accs in per_seed if accs]  # seeds that measured this net
    return (sum(best) / len(best), len(best), False) if best else None


def _row(job_dir: Path) -> dict[str, Any]:
    path = job_dir / JOB_METRICS
    if not path.is_file():
        return {"job": job_dir.name, "status": "failed", "overrides": "(no job_metrics.json: the job did not finish)"}
    data = json.loads(path.read_text())
    metrics = data.get("metrics", {})
    accuracy = metrics.get("test/acc_artifact", metrics.get("test/acc"))
    return {
        "job": job_dir.name,
        "status": data.get("status", "ok") if not data.get("error") else "failed",
        "overrides": " ".join(data.get("overrides", [])) or "-",
        "test_acc": metrics.get("test/acc"),
        "artifact_acc": accuracy,
        "artifact_bytes": metrics.get("size/artifact_bytes"),
        "ratio": metrics.get("size/ratio"),
        "fit_wall_s": metrics.get("fit/wall_s"),
    }


def summarise_sweep(
    sweep_dir: str | Path, console: Any = None, reference_acc: float | None = None
) -> list[dict[str, Any]]:
    """Write ``sweep_summary.{csv,png}`` into ``sweep_dir`` from its jobs' ``job_metrics.json``; the rows.

    ``reference_acc`` (the dense model's test accuracy, when the sweep has one) is drawn on the PNG. Returns no row
    when the directory holds no job.
    """
    sweep = Path(sweep_dir)
    jobs = (
        sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
        if sweep.is_dir()
        else []
    )
    if not jobs:
        return []
    rows = [_row(job) for job in jobs]
    scored = [r for r in rows if r["status"] == "ok" and r.get("artifact_bytes") and r.get("artifact_acc") is not None]
    mask = pareto_mask([r["artifact_bytes"] for r in scored], [r["artifact_acc"] for r in scored])
    for row in rows:
        row["pareto"] = False
    for row, best in zip(scored, mask, strict=True):
        row["pareto"] = best
    csv_path = sweep / "sweep_summary.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(_COLUMNS))
        writer.writeheader()
        writer.writerows({c: row.get(c) for c in _COLUMNS} for row in rows)
    if scored:
        _plot(scored, sweep / "sweep_summary.png", reference_acc)
    _print_pareto([r for r in scored if r["pareto"]], len(rows), console)
    return rows


def _plot(rows: list[dict[str, Any]], path: Path, reference_acc: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([r["artifact_bytes"] for r in rows], [100 * r["artifact_acc"] for r in rows], c="0.6", s=20, label="job")
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["artifact_bytes"])
    ax.plot(
        [r["artifact_bytes"] for r in front],
        [100 * r["artifact_acc"] for r in front],
        "o-",
        c="tab:red",
        label="Pareto",
    )
    for r in front:
        ax.annotate(r["job"], (r["artifact_bytes"], 100 * r["artifact_acc"]), fontsize=7)
    if reference_acc is not None:
        ax.axhline(100 * reference_acc, c="k", ls="--", lw=1, label=f"dense reference {100 * reference_acc:.2f}%")
    ax.set_xscale("log")
    ax.set_xlabel("artifact bytes on disk")
    ax.set_ylabel("test accuracy of the reloaded artifact (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _print_pareto(front: list[dict[str, Any]], jobs: int, console: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Sweep: {len(front)} Pareto-optimal of {jobs} jobs (bytes vs accuracy)")
    for column in ("job", "overrides", "acc (%)", "bytes", "ratio"):
        table.add_column(column, justify="left" if column in ("job", "overrides") else "right")
    for r in sorted(front, key=lambda r: r["artifact_bytes"]):
        ratio = r.get("ratio")
        table.add_row(
            r["job"],
            r["overrides"],
            f"{100 * r['artifact_acc']:.2f}",
            f"{int(r['artifact_bytes']):,}",
            "-" if ratio is None or not math.isfinite(ratio) else f"{ratio:.1f}x",
        )
    (console or Console()).print(table)


class SweepSummary(Callback):
    """Hydra callback: when a multirun ends, :func:`summarise_sweep` on the sweep directory, then W&B.

    The dense reference (``reference.{file,net}``, set by the ``full_*`` recipes) is drawn on the picture; when the
    sweep logs to W&B (``logger: wandb``), one more run in the sweep's group holds the table and a bytes-accuracy
    scatter (:func:`lightning_compress.tracking.log_sweep_to_wandb`).
    """

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        """Summarise the finished sweep (a broken summary never fails the sweep: it is logged)."""
        sweep = Path(str(config.hydra.sweep.dir))
        try:
            reference = config.get("reference") or {}
            dense = dense_reference(reference["file"], str(reference.get("net"))) if reference.get("file") else None
            rows = summarise_sweep(sweep, reference_acc=dense[0] if dense else None)
            if not rows:
                return
            log.info("Sweep summary: %s (and sweep_summary.png)", sweep / "sweep_summary.csv")
            logger = config.get("logger")
            if logger and "wandb" in logger:
                from lightning_compress.tracking import log_sweep_to_wandb

                png = sweep / "sweep_summary.png"
                log_sweep_to_wandb(
                    rows,
                    _COLUMNS,
                    png if png.is_file() else None,
                    project=str(logger.wandb.get("project") or "lightning_compress"),
                    group=str(logger.wandb.get("group") or sweep_group(config.task_name, sweep)),
                    save_dir=sweep,
                )
        except Exception:
            log.exception("Sweep summary failed for %s", sweep)
