"""The SuRP stream's writer and reader in bounded memory: a chunk's temporaries, not eight bytes per position.

The rounds are walked a piece of positions at a time and the symbols built a chunk at a time; these tests pin the
bytes to what one pass over the whole sequences writes (pieces and chunks shrunk so that every boundary is crossed)
and the memory to a few bytes per position (NumPy's allocations, traced).
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
import torch

from lightning_compress.codec import bits, entropy, surp, surp_symbols
from lightning_compress.codec.bits import BitReader, BitWriter, read_exp_golomb, write_exp_golomb
from lightning_compress.codec.surp import decode_stream, encode_stream, encode_with_statistics, stream_statistics
from lightning_compress.functional.successive_pruning import (
    kth_largest,
    largest_support,
    magnitudes,
    normalise,
    refine,
)


def _refinement(sizes: list[int], sparsity: float, ladder: float = 0.9) -> tuple[surp.SurpResult, np.ndarray]:
    rng = np.random.default_rng(3)
    tensors = [rng.laplace(size=k) * rng.uniform(0.2, 5.0) for k in sizes]
    u, signs, _ = normalise(tensors)
    return refine(u, target_sparsity=sparsity, refine_steps=2, ladder=ladder), signs


def test_exp_golomb_chunks_write_the_bytes_of_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    values = np.random.default_rng(0).geometric(0.01, size=5_000).astype(np.int64)
    whole = BitWriter()
    write_exp_golomb(whole, values)
    monkeypatch.setattr(bits, "CHUNK", 37)  # every chunk ends mid-byte
    monkeypatch.setattr(entropy, "_CHUNK", 41)
    chunked = BitWriter()
    write_exp_golomb(chunked, values)
    assert chunked.parts == whole.parts
    assert chunked.ans.finish() == whole.ans.finish()
    data = b"".join(chunked.parts)
    reader = BitReader(data, 0)
    reader.ans = entropy.AnsStackReader(chunked.ans.finish())
    assert np.array_equal(read_exp_golomb(reader, values.size), values)
    reader.ans.finish()


def test_pieces_and_many_rounds_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pieces of 64 positions, more than 255 rounds (two-byte labels), several gap models."""
    result, signs = _refinement([3_000, 1_500, 40, 2_200], sparsity=0.02, ladder=0.97)
    assert len(result.rounds) > 255
    whole = encode_stream(result, signs, segments=[3_000, 1_500, 40, 2_200])
    monkeypatch.setattr(surp_symbols, "_PIECE", 64)
    monkeypatch.setattr(bits, "CHUNK", 97)
    stream, statistics = encode_with_statistics(result, signs, segments=[3_000, 1_500, 40, 2_200])
    assert stream == whole
    decoded, decoded_signs = decode_stream(stream)
    assert np.array_equal(decoded.recon, result.recon)
    kept = result.recon != 0
    assert np.array_equal(decoded_signs[kept], signs[kept])
    assert statistics == stream_statistics(result, stream)


def _numpy_peak(run: object) -> int:
    tracemalloc.start()
    try:
        run()  # type: ignore[operator]
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_writing_and_reading_a_stream_take_a_few_bytes_per_position(monkeypatch: pytest.MonkeyPatch) -> None:
    # 80% of the positions kept: the support is most of the vector (before: ~40 bytes a position to write, ~35 to
    # read). Chunks and pieces shrunk so that their temporaries (bounded, whatever the network) stay out of the sum.
    monkeypatch.setattr(surp_symbols, "_PIECE", 1 << 14)
    monkeypatch.setattr(bits, "CHUNK", 1 << 14)
    monkeypatch.setattr(entropy, "_CHUNK", 1 << 14)
    n = 1_000_000
    result, signs = _refinement([n // 2, n // 4, n // 4], sparsity=0.2)
    segments = [n // 2, n // 4, n // 4]
    holder: dict[str, bytes] = {}
    write_peak = _numpy_peak(lambda: holder.setdefault("stream", encode_stream(result, signs, segments)))
    stream = holder["stream"]
    read_peak = _numpy_peak(lambda: surp.parse_stream(stream))
    picks = result.picks
    # the writer: a label a position, then per non-zero its label, its sign and its gap's bucket (a byte each), and
    # the stream as it is joined; the reader: 4-byte positions of the support and of every pick, beside the stream
    assert write_peak < 5 * n + 2 * len(stream)
    assert read_peak < 4 * n + 4 * picks + 2 * len(stream)


def test_largest_support_tensor_by_tensor_is_the_concatenated_selection() -> None:
    """The magnitudes computed per tensor on demand select what the concatenated ones and ``kthvalue`` selected."""
    g = torch.Generator().manual_seed(5)
    for trial in range(12):
        tensors = [torch.randn(int(k), generator=g) * (1 + trial) for k in torch.randint(1, 2000, (3,), generator=g)]
        tensors[0] = tensors[0].round(decimals=1)  # ties
        tensors[1][::3] = 0.0
        u, _ = magnitudes(tensors, dtype=torch.float32)
        for sparsity in (0.0, 0.3, 0.9, 0.999):
            keep = min(math.ceil(round((1 - sparsity) * u.numel(), 6)), int(torch.count_nonzero(u)))
            threshold = torch.kthvalue(u, u.numel() - keep + 1).values
            expected = ((u >= threshold) & (u > 0)).split([t.numel() for t in tensors])
            got = largest_support(tensors, sparsity)
            assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_kth_largest_is_kthvalue() -> None:
    values = torch.randn(10_000, generator=torch.Generator().manual_seed(1)).abs().round(decimals=2)  # ties
    values[::5] = 0.0
    for k in (1, 2, 17, 4_000, 8_000):
        assert kth_largest(values, k).item() == torch.kthvalue(values, values.numel() - k + 1).values.item()
    kept = largest_support([values[:4_000].reshape(40, 100), values[4_000:]], sparsity=0.5)
    assert sum(int(k.sum()) for k in kept) >= 5_000
    assert kth_largest(lambda: [values[:3000], values[3000:]], 17).item() == kth_largest(values, 17).item()
    with pytest.raises(ValueError, match="kth_largest"):
        kth_largest(values.double(), 1)
    with pytest.raises(ValueError, match="kth_largest"):
        kth_largest(values, 0)
