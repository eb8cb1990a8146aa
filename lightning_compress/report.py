"""Size report: every figure read from a real artifact file.

Per layer: parameters (elements), non-zeros, codec, bits per parameter, bytes of its payloads. Totals: the fp32 bytes
of the same model (4 bytes per floating element, native size for integer buffers), the artifact's bytes on disk, and
the compression ratio ``fp32 bytes / artifact bytes``. The container overhead (header, checksum) is its own row, so
the bytes column sums to the file size. A blob several tensors share (a SuRP stream, a codebook) is split over them
as its codec says (:meth:`~lightning_compress.codec.base.Codec.attribute_shared`); what no tensor accounts for (a
stream's head, a codebook used by all) stays on a ``(shared: ...)`` row.
"""

from __future__ import annotations

import csv
import gc
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from lightning_compress.codec import Artifact, read_artifact
from lightning_compress.codec.base import dtype_from_name, fp32_nbytes, get_codec
from lightning_compress.functional.neuron_elimination.pairs import LayerPair
from lightning_compress.functional.weight_sharing import SearchPoint, pareto_front
from lightning_compress.saving import metadata_path, save

__all__ = ["LayerSize", "SizeReport", "size_report"]


@dataclass(frozen=True)
class LayerSize:
    """One row of the report: the tensors of one module."""

    layer: str
    params: int
    nonzeros: int
    codecs: str
    bytes: int
    #: why its tensors got their codecs (``representation``, ``values``, ``stale``, ``asked`` or ``default``; see
    #: :data:`lightning_compress.codec.records.SOURCES`), "+"-joined when they differ
    why: str = ""

    @property
    def bits_per_param(self) -> float:
        """Stored bits per element."""
        return 8 * self.bytes / self.params if self.params else 0.0


@dataclass
class SizeReport:
    """Sizes of one artifact. Build it with :func:`size_report`.

    Examples:
        >>> import torch, lightning_compress as lc
        >>> report = lc.size_report(torch.nn.Linear(100, 10))
        >>> report.params, report.fp32_bytes, report.ratio < 1.0  # dense: the header makes it a little larger
        (1010, 4040, True)
    """

    path: str
    rows: list[LayerSize]
    overhead_bytes: int
    artifact_bytes: int
    fp32_bytes: int
    metadata: dict[str, Any] = field(default_factory=dict)
    #: fp32 bytes of the tensors actually stored (differs from ``fp32_bytes`` after structural compression).
    stored_fp32_bytes: int | None = None
    #: tensor name -> why it got its codec (see :class:`LayerSize`)
    sources: dict[str, str] = field(default_factory=dict)
    #: tied tensors stored once: alias -> stored name
    aliases: dict[str, str] = field(default_factory=dict)

    @property
    def params(self) -> int:
        """Total elements stored."""
        return sum(r.params for r in self.rows)

    @property
    def nonzeros(self) -> int:
        """Total non-zero elements."""
        return sum(r.nonzeros for r in self.rows)

    @property
    def ratio(self) -> float:
        """Compression ratio: fp32 bytes of the same model / artifact bytes on disk.

        After structural compression (e.g. :class:`~lightning_compress.NeuronElimination`) "the same model" is the
        original, larger one: its fp32 size is recorded in the artifact.
        """
        return self.fp32_bytes / self.artifact_bytes

    @property
    def bits_per_param(self) -> float:
        """Artifact bits per stored element (whole file, overhead included)."""
        return 8 * self.artifact_bytes / max(self.params, 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, with the totals."""
        return {
            "path": self.path,
            "rows": [{**asdict(r), "bits_per_param": r.bits_per_param} for r in self.rows],
            "overhead_bytes": self.overhead_bytes,
            "artifact_bytes": self.artifact_bytes,
            "fp32_bytes": self.fp32_bytes,
            "params": self.params,
            "nonzeros": self.nonzeros,
            "ratio": self.ratio,
            "bits_per_param": self.bits_per_param,
        }

    def summary(self) -> dict[str, float]:
        """Flat totals, for loggers (``size/...`` keys)."""
        return {
            "size/artifact_bytes": float(self.artifact_bytes),
            "size/fp32_bytes": float(self.fp32_bytes),
            "size/ratio": self.ratio,
            "size/params": float(self.params),
            "size/nonzeros": float(self.nonzeros),
            "size/bits_per_param": self.bits_per_param,
        }

    def table(self) -> Table:
        """A rich table of the report."""
        table = Table(title=f"Size report: {self.path}", header_style="bold")
        table.add_column("layer")
        for col in ("params", "non-zeros", "codec", "why", "bits/param", "bytes"):
            table.add_column(col, justify="left" if col in ("codec", "why") else "right")
        for r in self.rows:
            table.add_row(
                r.layer,
                f"{r.params:,}",
                f"{r.nonzeros:,}",
                r.codecs,
                r.why,
                f"{r.bits_per_param:.3f}",
                f"{r.bytes:,}",
            )
        table.add_row("(container: header + checksum)", "", "", "", "", "", f"{self.overhead_bytes:,}")
        table.add_section()
        table.add_row(
            "total",
            f"{self.params:,}",
            f"{self.nonzeros:,}",
            "",
            "",
            f"{self.bits_per_param:.3f}",
            f"{self.artifact_bytes:,}",
            style="bold",
        )
        before = ""
        if self.stored_fp32_bytes is not None and self.stored_fp32_bytes != self.fp32_bytes:
            before = f" (original model; {self.stored_fp32_bytes:,} after structural compression)"
        table.caption = (
            f"fp32 bytes {self.fp32_bytes:,}{before} | artifact bytes on disk {self.artifact_bytes:,} | "
            f"compression ratio {self.ratio:.2f}x"
        )
        if self.aliases:
            tied = ", ".join(f"{a} = {n}" for a, n in list(self.aliases.items())[:4])
            table.caption += f"\ntied tensors stored once: {tied}{' ...' if len(self.aliases) > 4 else ''}"
        if any(why in ("stale", "values") for why in self.sources.values()):
            table.caption += (
                "\nwhy: 'values' = no compression decision found, codec chosen from the values; 'stale' = the values "
                "changed after the decision (e.g. fine-tuned), codec chosen from the values"
            )
        return table
        return table

    def print(self, console: Console | None = None) -> None:
        """Print the table (rich)."""
        (console or Console()).print(self.table())

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """A picture of the report: bytes per layer (log axis) coloured by codec, bits per parameter on each bar.

        Args:
            path: the PNG to write (parent directories are created).

        Returns:
            The path written.

        Examples:
            >>> import tempfile, torch, lightning_compress as lc
            >>> net = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
            >>> with tempfile.TemporaryDirectory() as d:
            ...     picture = lc.size_report(net).plot(f"{d}/report.png")
            ...     picture.stat().st_size > 0
            True
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        # tensors' rows, then what no single tensor owns: shared blobs (codebooks) and the container itself
        rows = [r for r in self.rows if r.bytes > 0]
        rows.append(LayerSize("(container: header + checksum)", 0, 0, "", self.overhead_bytes))
        kinds = [r.codecs or "shared / container" for r in rows]
        codecs = sorted(set(kinds))
        colours = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(codecs)}
        fig, ax = plt.subplots(figsize=(8, 0.9 + 0.32 * max(len(rows), 1)))
        positions = range(len(rows))
        ax.barh(positions, [r.bytes for r in rows], color=[colours[k] for k in kinds])
        for y, row in zip(positions, rows, strict=True):
            label = f" {row.bytes:,} B" + (f", {row.bits_per_param:.2f} bits/param" if row.params else "")
            ax.text(row.bytes, y, label, va="center", fontsize=7)
        ax.set_yticks(list(positions), [r.layer for r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("bytes in the artifact (log)")
        ax.set_title(
            f"{Path(self.path).name}: {self.artifact_bytes:,} bytes, {self.ratio:.1f}x smaller than fp32 "
            f"({self.bits_per_param:.3f} bits/param)",
            fontsize=9,
        )
        handles = [plt.Rectangle((0, 0), 1, 1, color=colours[c]) for c in codecs]
        ax.legend(handles, codecs, fontsize=7, loc="lower right", title="codec", title_fontsize=7)
        sizes = [max(r.bytes, 1) for r in rows]
        ax.set_xlim(min(sizes) / 2, max(sizes) * 12)  # room for the labels right of the longest bar (log axis)
        fig.tight_layout()
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(target, dpi=120)
        plt.close(fig)
        return target

    def log_to(self, loggers: Iterable[Any]) -> None:
        """Send the totals (and, for W&B, the per-layer table and run summary) to Lightning loggers."""
        totals = self.summary()
        for logger in loggers:
            if type(logger).__name__ == "WandbLogger":
                run = logger.experiment
                for key, value in totals.items():
                    run.summary[key] = value
                logger.log_table(
                    key="size/report",
                    columns=["layer", "params", "nonzeros", "codec", "bits_per_param", "bytes"],
                    data=[[r.layer, r.params, r.nonzeros, r.codecs, r.bits_per_param, r.bytes] for r in self.rows],
                )
            else:
                logger.log_metrics(totals)
            logger.save()


def _layer_of(name: str) -> str:
    return name.rpartition(".")[0] or "(root)"


def report_from_artifact(artifact: Artifact) -> SizeReport:
    """Build the report of an already parsed artifact."""
    grouped: dict[str, dict[str, Any]] = {}
    fp32 = 0
    decoded: Mapping[str, torch.Tensor] = artifact.state_dict()
    for record in artifact.tensors:
        row = grouped.setdefault(
            _layer_of(record.name), {"params": 0, "nonzeros": 0, "codecs": [], "bytes": 0, "why": []}
        )
        if record.source not in row["why"]:
            row["why"].append(record.source)
        row["params"] += record.numel
        row["nonzeros"] += int(torch.count_nonzero(decoded[record.name]))
        if record.codec not in row["codecs"]:
            row["codecs"].append(record.codec)
        row["bytes"] += record.nbytes
        dtype = dtype_from_name(record.dtype)
        fp32 += fp32_nbytes(record.numel, dtype)
    shared_rows = []
    for key, (_, nbytes) in artifact.shared.items():
        # the codec that wrote a shared blob says how much of it each tensor accounts for; the rest is its overhead
        users = [r for r in artifact.tensors if key in r.meta.get("shared_keys", [])]
        shares = (
            get_codec(users[0].codec).attribute_shared(
                artifact.shared_blob(key), {r.name: {**r.meta, "numel": r.numel} for r in users}
            )
            if users
            else {}
        )
        for record in users:
            grouped[_layer_of(record.name)]["bytes"] += shares.get(record.name, 0)
        shared_rows.append(LayerSize(f"(shared: {key})", 0, 0, "", nbytes - sum(shares.values())))
    rows = [
        LayerSize(k, v["params"], v["nonzeros"], "+".join(v["codecs"]), v["bytes"], "+".join(v["why"]))
        for k, v in grouped.items()
    ]
    rows += shared_rows
    return SizeReport(
        path=str(artifact.path),
        rows=rows,
        overhead_bytes=artifact.file_bytes - sum(r.bytes for r in rows),
        artifact_bytes=artifact.file_bytes,
        fp32_bytes=artifact.reference_fp32_bytes or fp32,
        metadata=artifact.metadata,
        stored_fp32_bytes=fp32,
        sources={r.name: r.source for r in artifact.tensors},
        aliases=dict(artifact.aliases),
    )


def size_report(model_or_path: nn.Module | str | os.PathLike[str], **save_kwargs: Any) -> SizeReport:
    """Size report of an artifact file, or of a model (saved to a temporary artifact first, then read back).

    Args:
        model_or_path: an artifact path, or a module to save with :func:`lightning_compress.save`.
        **save_kwargs: passed to :func:`lightning_compress.save` when a module is given.

    Examples:
        >>> import torch
        >>> from lightning_compress import size_report
        >>> report = size_report(torch.nn.Linear(100, 10))
        >>> report.params, report.fp32_bytes, report.artifact_bytes > report.fp32_bytes
        (1010, 4040, True)
    """
    if not isinstance(model_or_path, nn.Module | str | os.PathLike):
        raise ValueError(
            f"`model_or_path` must be a torch.nn.Module or an artifact path, got {type(model_or_path).__name__}."
        )
    if isinstance(model_or_path, nn.Module):
        with tempfile.TemporaryDirectory() as tmp:
            path = save(model_or_path, Path(tmp) / "model.lcz", **save_kwargs)
            report = report_from_artifact(read_artifact(path))
            report.path = "(in-memory model)"
            return report
    report = report_from_artifact(read_artifact(model_or_path))
    sidecar = metadata_path(model_or_path)
    if not report.metadata and sidecar.is_file():  # ArtifactWriter's metadata, written beside the file
        try:
            beside = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            beside = None
        if isinstance(beside, dict):
            report.metadata = beside
    return report


def elimination_table(
    pairs: Sequence[LayerPair], alive: Sequence[Sequence[int]], dense_params: int, params: int
) -> Table:
    """NeuronElimination's summary: neurons per layer before and after, and the parameter count.

    Examples:
        >>> from lightning_compress.functional.neuron_elimination import LayerPair
        >>> table = elimination_table([LayerPair("fc1", "fc2", (), 4, 1, True)], [[0, 2]], 100, 60)
        >>> table.caption
        'parameters 100 -> 60 (60.00%)'
    """
    table = Table(title="NeuronElimination")
    for column in ("layer", "consumer", "neurons", "kept"):
        table.add_column(column, justify="right" if column in ("neurons", "kept") else "left")
    for pair, kept in zip(pairs, alive, strict=True):
        table.add_row(
            pair.producer, pair.consumer, f"{pair.channels} -> {len(kept)}", f"{len(kept) / pair.channels:.1%}"
        )
    fraction = params / max(dense_params, 1)
    table.caption = f"parameters {dense_params:,} -> {params:,} ({fraction:.2%})"
    return table


def write_sharing_front(
    out: Path,
    screened: Sequence[SearchPoint],
    points: Sequence[SearchPoint],
    screen_used: bool,
    metric: str,
    baseline_error: float,
    chosen: SearchPoint,
) -> list[dict[str, Any]]:
    """WeightSharing's search as ``weight_sharing_pareto.csv`` and ``.png`` in ``out``; the CSV's rows.

    ``screened``: the points scored on the screening samples (or on all, without screening); ``points``: those
    scored on all validation samples (confirmed or merged).
    """
    out.mkdir(parents=True, exist_ok=True)
    label = "screen" if screen_used else "validation"
    front = set(pareto_front(list(screened)))
    scored = [(p, label) for p in screened]
    scored += [(p, "validation") for p in points if screen_used or p.merged]
    rows = [
        {
            "k": p.k,
            "num_shared": p.num_shared,
            "val_error": round(p.error, 6),
            f"val_{metric}": round(1.0 - p.error, 6),
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
    _plot_sharing_front(
        out / "weight_sharing_pareto.png", screened, points, screen_used, metric, front, baseline_error, chosen
    )
    return rows


def _plot_sharing_front(
    path: Path,
    screened: Sequence[SearchPoint],
    points: Sequence[SearchPoint],
    screen_used: bool,
    metric: str,
    front: set[SearchPoint],
    baseline_error: float,
    chosen: SearchPoint,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    label = "screened" if screen_used else "evaluated"
    ax.scatter([p.num_shared for p in screened], [1 - p.error for p in screened], s=8, c="0.7", label=label)
    line = sorted(front, key=lambda p: p.num_shared)
    ax.plot([p.num_shared for p in line], [1 - p.error for p in line], "o-", ms=4, label=f"Pareto front ({label})")
    if screen_used:
        confirmed = [p for p in points if not p.merged]
        ax.scatter(
            [p.num_shared for p in confirmed],
            [1 - p.error for p in confirmed],
            marker="x",
            c="tab:blue",
            label="confirmed on all validation data",
        )
    merged = [p for p in points if p.merged]
    if merged:
        ax.scatter([p.num_shared for p in merged], [1 - p.error for p in merged], c="tab:red", s=30, label="merged")
    ax.scatter([chosen.num_shared], [1 - chosen.error], marker="*", s=200, c="gold", edgecolors="k", label="chosen")
    ax.axhline(1 - baseline_error, color="k", ls="--", lw=1, label="unshared")
    ax.set_xscale("log")
    ax.set_xlabel("shared values")
    ax.set_ylabel(f"validation {metric}")
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
