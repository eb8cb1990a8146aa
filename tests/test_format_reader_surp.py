"""An independent reader of the ``surp`` stream, written from docs/format.md alone (version 2).

Standard library, NumPy and constriction only, with the container parts of ``tests/test_format_reader.py``; checked
against ``lc.load`` on a network refined by the library, with both refresh rules and a segment large enough for a
gap model of its own.
"""

from __future__ import annotations

import struct
from pathlib import Path

import constriction
import numpy as np
import pytest
import torch

import lightning_compress as lc
from tests.helpers.models import surp_refined
from tests.test_format_reader import Cursor, _dequantized, _model, read_container


def _eg(cur: Cursor, coder: object, m: int) -> np.ndarray:
    """EG(m): histogram block, m buckets from the ANS stream, low-bits block."""
    buckets = np.asarray(coder.decode(_model(_dequantized(cur.block())), m), dtype=np.int64) if m else np.zeros(0, int)
    bits, low = np.unpackbits(np.frombuffer(cur.block(), dtype=np.uint8)), np.zeros(m, dtype=np.int64)
    starts = np.cumsum(buckets) - buckets
    for j in range(int(buckets.max(initial=0))):
        has = buckets > j
        low[has] = (low[has] << 1) | bits[starts[has] + j]
    return (1 << buckets) + low


def decode_surp(stream: bytes) -> np.ndarray:
    """The signed vector v of a version-2 stream."""
    version, mean, t0, ladder = struct.unpack_from("<BBdd", stream)
    assert version == 2
    cur = Cursor(stream)
    cur.pos = 18
    n, rounds, s, g = cur.varint(), cur.varint(), cur.varint(), cur.varint()
    sizes = [cur.varint() for _ in range(g)]
    counts = [cur.varint() for _ in range(g)]
    coder = constriction.stream.stack.AnsCoder(np.frombuffer(cur.block(), dtype="<u4").astype(np.uint32))
    refinements = _eg(cur, coder, rounds) - 1
    if mean:
        flags = np.unpackbits(np.frombuffer(cur.block(), dtype=np.uint8))[:rounds]
        means = iter(np.frombuffer(cur.block(), dtype="<f8").tolist())
    else:
        steps = np.asarray(coder.decode(_model(_dequantized(cur.block())), rounds)) if rounds else []
    models, own = [0] * g, 0  # model 0 shared by the small segments, 1, 2, ... one per large one
    for i, c in enumerate(counts):
        if c >= 1000:
            own += 1
            models[i] = own
    starts = np.cumsum([0, *sizes])
    support: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * g
    for model in range(own + 1):
        members = [i for i in range(g) if models[i] == model]
        total = sum(counts[i] for i in members)
        if total:
            gaps = _eg(cur, coder, total)
            for i in members:
                support[i] = np.cumsum(gaps[: counts[i]]) - 1 + starts[i]
                gaps = gaps[counts[i] :]
    positions = np.concatenate(support)
    per_round = (_eg(cur, coder, rounds) - 1).astype(np.float64)
    labels = np.asarray(coder.decode(_model(per_round), s)) if s else np.zeros(0, int)
    refine_gaps = _eg(cur, coder, int(refinements.sum()))
    signs = np.unpackbits(np.frombuffer(cur.block(), dtype=np.uint8))[:s]
    assert coder.is_empty()
    assert cur.pos == len(stream)
    u, t, used = [0.0] * n, t0, 0
    for r in range(rounds):
        if not mean:
            for _ in range(int(steps[r])):
                t = t * ladder
        elif flags[r]:
            t = next(means)
        earlier = positions[labels < r]
        ranks = np.cumsum(refine_gaps[used : used + refinements[r]]) - 1
        used += int(refinements[r])
        picks = np.concatenate([earlier[ranks], positions[labels == r]])
        for p in picks.tolist():
            u[p] = u[p] + t
        t = t * (1.0 - 1.0 / n) ** len(picks)
    v = np.zeros(n)
    v[positions] = np.where(signs == 1, -1.0, 1.0) * np.array(u)[positions]
    return v


def read_surp(path: Path) -> dict[str, np.ndarray]:
    header, payload = read_container(path)
    out = {}
    for t in header["tensors"]:
        if t["codec"] == "surp":
            offset, size = header["shared"][t["meta"]["key"]]
            v = decode_surp(payload[offset : offset + size])
            start, numel = t["meta"]["offset"], int(np.prod(t["shape"]))
            out[t["name"]] = (v[start : start + numel] * t["meta"]["norm"]).astype(np.float32).reshape(t["shape"])
    return out


@pytest.mark.parametrize("refresh", ["ladder", "mean"])
def test_independent_surp_reader_matches_lc_load(tmp_path: Path, refresh: str) -> None:
    def net() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 4))

    torch.manual_seed(0)
    model = net()
    codecs, _ = surp_refined(model, 0.6, refresh)
    params = list(model.parameters())
    assert int((params[0] != 0).sum()) >= 1000  # a gap model of its own, next to the shared one
    path = lc.save(model, tmp_path / "surp.lcz", codecs=codecs)
    ours = read_surp(path)
    loaded = lc.load(path, model=net())
    assert set(ours) == {n for n, _ in loaded.named_parameters()}
    for name, tensor in loaded.state_dict().items():
        assert np.array_equal(ours[name], tensor.numpy()), name
