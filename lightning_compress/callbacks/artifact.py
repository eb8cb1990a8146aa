"""ArtifactWriter callback: write the compressed artifact at the end of ``fit``, from the process that trained."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from typing_extensions import override

from lightning_compress.arguments import check_bool, check_choice, check_metadata, check_names
from lightning_compress.codec.frame import atomic_write
from lightning_compress.saving import metadata_path, save

__all__ = ["ArtifactWriter"]


class ArtifactWriter(Callback):
    """Write ``lightning_compress.save(pl_module, path)`` on global rank 0 in ``on_fit_end``.

    Runs after every compression callback's end-of-fit step and inside the training process, so the codecs the
    compression callbacks chose are used under every strategy (with ``ddp_spawn`` the parent process only gets
    the weights back, not the callbacks' state). Put it last in the callback list.

    Args:
        path: the artifact file (parent directories are created); relative paths are under the trainer's
            ``default_root_dir``.
        precision: ``"float32"`` or ``"float16"`` for tensors no compression method claims.
        metadata: JSON-able values about the run (recipe name, tags), written with the metrics below.
        metric_prefixes: logged metrics whose name starts with one of these are written too (their values at the
            end of fit). The default keeps the validation metrics and leaves out per-step training figures.
        metadata_in_file: write the metadata into the artifact's header. By default it goes beside the artifact,
            in ``<path>.json`` (``model.lcz`` -> ``model.json``): in a file of a few kilobytes the run's names and
            metrics would be a tenth of its bytes, and the size reported is the model's.

    Examples:
        >>> ArtifactWriter("model.lcz").path
        PosixPath('model.lcz')
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = "model.lcz",
        precision: str = "float32",
        metadata: dict[str, Any] | None = None,
        metric_prefixes: Sequence[str] = ("val",),
        metadata_in_file: bool = False,
    ) -> None:
        check_choice("precision", precision, ("float32", "float16"))
        if not isinstance(path, str | os.PathLike) or not str(path):
            raise ValueError(f"`path` must be a file path (str or os.PathLike), got {path!r}.")
        check_metadata("metadata", metadata, kind=dict)
        check_names("metric_prefixes", metric_prefixes, allow_none=False)
        check_bool("metadata_in_file", metadata_in_file)
        self.path = Path(path)
        self.precision = precision
        self.metadata = dict(metadata or {})
        self.metric_prefixes = tuple(metric_prefixes)
        self.metadata_in_file = metadata_in_file
        self.written: Path | None = None

    def resolved_path(self, trainer: pl.Trainer) -> Path:
        """Where the artifact goes for this trainer."""
        return self.path if self.path.is_absolute() else Path(trainer.default_root_dir) / self.path

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            metrics = {
                k: float(v)
                for k, v in trainer.callback_metrics.items()
                if v.numel() == 1 and k.startswith(self.metric_prefixes)
            }
            metadata = {**self.metadata, **metrics}
            path = self.resolved_path(trainer)
            self.written = save(
                pl_module, path, precision=self.precision, metadata=metadata if self.metadata_in_file else None
            )
            beside = ""
            if not self.metadata_in_file:
                sidecar = atomic_write(metadata_path(path), json.dumps(metadata, indent=1, sort_keys=True).encode())
                beside = f"; its metadata in {sidecar.name}"
            rank_zero_info(f"ArtifactWriter: wrote {self.written} ({self.written.stat().st_size:,} bytes{beside}).")
        trainer.strategy.barrier("artifact_writer")
