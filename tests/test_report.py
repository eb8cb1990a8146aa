from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import lightning_compress as lc
from lightning_compress.models import build_model


def test_report_reads_the_file(tmp_path: Path) -> None:
    model = build_model("lenet_300_100")
    with torch.no_grad():
        model.fc1.weight[:, :100] = 0.0  # 30,000 zeros
    path = lc.save(model, tmp_path / "m.lcz")
    report = lc.size_report(path)
    assert report.artifact_bytes == os.path.getsize(path)
    assert sum(r.bytes for r in report.rows) + report.overhead_bytes == report.artifact_bytes
    assert report.params == 266_610
    assert report.fp32_bytes == 4 * 266_610
    assert report.nonzeros == 266_610 - 30_000
    assert [r.layer for r in report.rows] == ["fc1", "fc2", "fc3"]
    assert report.rows[0].bits_per_param == 32.0
    assert 0.99 < report.ratio < 1.0  # dense fp32 plus a small header
    assert report.to_dict()["ratio"] == report.ratio


def test_fp16_report_ratio_is_about_two(tmp_path: Path) -> None:
    path = lc.save(build_model("lenet_300_100"), tmp_path / "h.lcz", precision="float16")
    report = lc.size_report(path)
    assert 1.99 < report.ratio < 2.0
    assert report.rows[0].bits_per_param == 16.0


def test_report_of_in_memory_model_equals_report_of_its_file(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(10, 5), nn.BatchNorm1d(5))
    from_model = lc.size_report(model)
    from_file = lc.size_report(lc.save(model, tmp_path / "x.lcz"))
    assert from_model.artifact_bytes == from_file.artifact_bytes
    # the int64 num_batches_tracked buffer counts at its native 8 bytes
    assert from_model.fp32_bytes == 4 * (55 + 5 * 4) + 8


def test_table_and_summary(tmp_path: Path) -> None:
    from rich.console import Console

    report = lc.size_report(lc.save(nn.Linear(3, 2), tmp_path / "t.lcz"))
    console = Console(record=True, width=150)
    report.print(console)
    text = console.export_text()
    assert "compression ratio" in text
    assert "(root)" in text
    assert report.summary()["size/artifact_bytes"] == float(report.artifact_bytes)


def test_a_shared_surp_stream_is_split_over_its_layers(tmp_path: Path) -> None:
    """Per-layer attribution: each layer's row carries its share of the SuRP stream; the totals are the file size."""
    from tests.helpers.models import mlp, surp_refined

    torch.manual_seed(0)
    net = mlp()
    codecs, stream = surp_refined(net, 0.8)
    report = lc.size_report(lc.save(net, tmp_path / "surp.lcz", codecs=codecs))
    layers = {r.layer: r for r in report.rows}
    assert all(layers[name].bytes > 0 for name in ("0", "2", "4"))
    by_nonzeros = sorted(("0", "2", "4"), key=lambda n: layers[n].nonzeros)
    assert sorted(("0", "2", "4"), key=lambda n: layers[n].bytes) == by_nonzeros  # more picks, more of the stream
    (shared,) = [r for r in report.rows if r.layer.startswith("(shared")]
    assert 0 < shared.bytes < 0.1 * len(stream)  # only the stream's head and rounding stay on the blob's row
    assert sum(r.bytes for r in report.rows) + report.overhead_bytes == report.artifact_bytes


@pytest.mark.parametrize("in_file", [False, True])
def test_artifact_writer_puts_metadata_beside_the_file_unless_asked(tmp_path: Path, in_file: bool) -> None:
    import lightning.pytorch as pl

    from tests.helpers.models import loaders, mlp, trainer_kwargs

    writer = lc.ArtifactWriter("m.lcz", metadata={"task_name": "demo"}, metadata_in_file=in_file)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=1, callbacks=[writer]))  # type: ignore[arg-type]
    trainer.fit(lc.ImageClassifier(mlp(), num_classes=4), *loaders())
    assert writer.written == tmp_path / "m.lcz"
    stored = lc.read_artifact(writer.written).metadata
    beside = tmp_path / "m.json"
    assert beside.is_file() is not in_file
    metadata = stored if in_file else json.loads(beside.read_text())
    assert metadata["task_name"] == "demo"
    assert 0.0 <= metadata["val/acc"] <= 1.0
    assert (stored == {}) is not in_file
    assert lc.size_report(writer.written).metadata == metadata
