"""Tiny models and data for Trainer tests (BoringModel style)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def blobs(
    n: int = 256, dim: int = 16, classes: int = 4, seed: int = 0, sample_seed: int | None = None
) -> TensorDataset:
    """Gaussian class clusters, learnable in a few steps.

    ``seed`` draws the cluster centres (the distribution), ``sample_seed`` (default ``seed``) the samples: two sets
    with one ``seed`` and different ``sample_seed`` are distinct samples of one distribution.
    """
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(seed)) * 2.0
    g = torch.Generator().manual_seed(seed if sample_seed is None else sample_seed + 7919)
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, dim, generator=g)
    return TensorDataset(x, y)


def loaders(batch_size: int = 32, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """(train, val) loaders of distinct samples of the same distribution."""
    return (
        DataLoader(blobs(256, seed=seed), batch_size=batch_size, shuffle=True),
        DataLoader(blobs(128, seed=seed, sample_seed=seed + 100), batch_size=64),
    )


def mlp(dim: int = 16, hidden: int = 32, classes: int = 4) -> nn.Sequential:
    """Linear-ReLU-Linear-ReLU-Linear."""
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes)
    )


def trainer_kwargs(tmp_path: object, **overrides: object) -> dict[str, object]:
    """Quiet, fast CPU Trainer settings."""
    kwargs: dict[str, object] = {
        "default_root_dir": tmp_path,
        "max_epochs": 2,
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    kwargs.update(overrides)
    return kwargs


def ordered_loaders() -> tuple[DataLoader, DataLoader]:
    """(train, val) loaders without shuffling: the data order is reproducible across a resume."""
    return DataLoader(blobs(256), batch_size=32), DataLoader(blobs(128, sample_seed=7), batch_size=64)


class CrashAtEpoch(pl.Callback):
    """Raise ``RuntimeError("simulated crash")`` when epoch ``epoch`` starts."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def run_ddp_check(method: str, out: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Run ``tests.helpers.ddp_check METHOD OUT`` (2 CPU processes) and return both ranks' final weights."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.helpers.ddp_check", method, str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=Path(__file__).parents[2],
    )
    if proc.returncode != 0:
        raise AssertionError(f"ddp_check {method} failed:\n{proc.stderr[-3000:]}")
    return torch.load(out / "rank0.pt", weights_only=True), torch.load(out / "rank1.pt", weights_only=True)


def surp_refined(net: nn.Module, target_sparsity: float, refresh: str = "ladder") -> tuple[dict[str, object], bytes]:
    """Refine all of ``net``'s parameters in place into one SuRP stream (no Trainer): their codecs and the stream."""
    import numpy as np

    from lightning_compress.codec import CodecSpec
    from lightning_compress.codec.surp import decode_stream, encode_stream
    from lightning_compress.functional.successive_pruning import normalise, refine

    params = list(net.parameters())
    u, signs, norms = normalise([p.detach().double().numpy() for p in params])
    result = refine(u, target_sparsity=target_sparsity, refresh=refresh)
    stream = encode_stream(result, signs, [p.numel() for p in params])
    decoded, decoded_signs = decode_stream(stream)
    codecs, offset = {}, 0
    with torch.no_grad():
        for (name, p), norm in zip(net.named_parameters(), norms, strict=True):
            values = (decoded_signs * decoded.recon)[offset : offset + p.numel()] * norm
            p.copy_(torch.from_numpy(values.astype(np.float32)).reshape(p.shape))
            codecs[name] = CodecSpec("surp", {"stream": stream, "offset": offset, "numel": p.numel(), "norm": norm})
            offset += p.numel()
    return codecs, stream
