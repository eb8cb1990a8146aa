"""The ternary quantizer and the ``ternary`` codec (the foundation of issue #4; the callback is not built yet)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lightning_compress as lc
from lightning_compress.codec import CodecSpec, get_codec
from lightning_compress.functional.ternarization import ternarize, ternary_ste


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("shape", [(64, 32), (16, 8, 3, 3)])
def test_at_most_three_values_per_channel(shape: tuple[int, ...], per_channel: bool) -> None:
    w = torch.randn(shape)
    values = ternarize(w, per_channel=per_channel).values()
    rows = values.reshape(shape[0], -1) if per_channel else values.reshape(1, -1)
    for row in rows:
        distinct = torch.unique(row)
        assert len(distinct) <= 3
        assert torch.allclose(distinct.abs()[distinct != 0], distinct.abs().max())


def test_scale_minimises_l2_for_the_support() -> None:
    w = torch.randn(8, 50)
    t = ternarize(w)
    for row, sym, scale in zip(w, t.symbols.float(), t.scales, strict=True):
        best = (row * sym).sum() / (sym * sym).sum()  # least-squares scale for fixed symbols
        assert scale == pytest.approx(float(best), rel=1e-5)


def test_threshold_rules() -> None:
    w = torch.randn(4, 1000)
    twn = ternarize(w, rule="twn")
    delta = 0.7 * w.abs().mean(dim=1, keepdim=True)
    assert torch.equal(twn.symbols != 0, w.abs() > delta)
    sparse = ternarize(w, rule="sparsity", sparsity=0.8)
    assert float((sparse.symbols == 0).float().mean()) == pytest.approx(0.8, abs=0.002)
    with pytest.raises(ValueError, match="`rule`"):
        ternarize(w, rule="median")
    with pytest.raises(ValueError, match="`sparsity`"):
        ternarize(w, rule="sparsity")


def test_straight_through_gradient_reaches_latent_weights() -> None:
    w = torch.randn(6, 5, requires_grad=True)
    x = torch.randn(3, 5)
    out = x @ ternary_ste(w).T
    out.sum().backward()
    assert w.grad is not None
    assert torch.allclose(w.grad, torch.ones(3, 6).T @ x)  # identity through the quantizer


@pytest.mark.parametrize("sparsity", [0.3, 0.95])
def test_codec_round_trip_exact_and_picks_the_smaller_coding(tmp_path: Path, sparsity: float) -> None:
    layer = torch.nn.Linear(200, 100)
    with torch.no_grad():
        layer.weight.copy_(ternarize(layer.weight, rule="sparsity", sparsity=sparsity).values())
    path = lc.save(layer, tmp_path / "t.lcz", codecs={"weight": CodecSpec("ternary")})
    record = next(r for r in lc.read_artifact(path).tensors if r.name == "weight")
    loaded = lc.load(path, model=torch.nn.Linear(200, 100))
    assert torch.equal(loaded.weight, layer.weight)
    packed_bytes = 100 * 4 + (200 * 100 * 2) // 8
    if sparsity > 0.9:  # mostly zeros: entropy coding beats 2 bits per symbol by far
        assert record.meta["coding"] == "ans"
        assert record.nbytes < 0.5 * packed_bytes
    else:
        assert record.nbytes <= packed_bytes


def test_codec_refuses_non_ternary_rows() -> None:
    with pytest.raises(ValueError, match="more than one magnitude"):
        get_codec("ternary").encode(torch.tensor([[0.5, -0.25], [1.0, 0.0]]))
