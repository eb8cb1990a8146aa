"""An independent reader of `dense`, `sparse_codebook` and `sparse` tensors, written from docs/format.md alone.

It reads format 3 files of models outside the zoo (names and shapes written).

Standard library, NumPy and constriction only (nothing from lightning_compress is imported to read); checked against
``lc.load`` on a pruned and shared network.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import constriction
import numpy as np
import torch

import lightning_compress as lc

SPEC = Path(__file__).resolve().parents[1] / "docs" / "format.md"


class Cursor:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def varint(self) -> int:
        value = shift = 0
        while True:
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    def block(self) -> bytes:
        size = self.varint()
        self.pos += size
        return self.data[self.pos - size : self.pos]

    def byte(self) -> int:
        self.pos += 1
        return self.data[self.pos - 1]


def _model(counts: np.ndarray) -> object:
    p = np.asarray(counts, dtype=np.float64)
    p = np.append(p, 0.0) if p.size < 2 else p
    return constriction.stream.model.Categorical(p / p.sum(), perfect=False)


def _dequantized(codes: bytes) -> np.ndarray:
    c = np.frombuffer(codes, dtype=np.uint8).astype(np.int64)
    return np.where(c < 16, c, (8 + (c - 16) % 8) << np.maximum((c - 16) // 8 + 1, 0))


DTYPES = ["float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"]
CODECS = ["dense", "sparse", "codebook", "sparse_codebook", "ternary", "surp"]


def read_container(path: Path) -> tuple[dict, bytes]:
    """Format 3's frame and header, for a file that writes its names and shapes (a model outside the zoo)."""
    data = path.read_bytes()
    assert data[:4] == b"LCZ\x89"
    assert data[4] == 3
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])
    cur = Cursor(data[:-4])
    cur.pos = 5
    flags = cur.varint()
    assert flags & 2  # names written: this reader does not build zoo architectures
    if flags & 1:
        cur.block(), cur.block()
    if (flags >> 2) & 3 == 2:
        cur.varint()
    for bit in (16, 32, 64):  # modules, metadata, aliases
        if flags & bit:
            cur.block()
    sizes = [cur.varint() for _ in range(cur.varint())]
    keys = [f"shared-{i}" for i in range(len(sizes))]
    tensors, name, offset = [], "", 0
    surp_next: dict[int, int] = {}
    for _ in range(cur.varint()):
        common = cur.varint()
        name = name[:common] + cur.block().decode()
        head = cur.byte()
        code, c = head & 15, head >> 6
        assert head & 48 == 48  # shape and detail written
        dtype = DTYPES[cur.byte() & 31]
        assert cur.varint() == 0  # the shape in full
        shape = [cur.varint() for _ in range(cur.varint())]
        blob = lambda: cur.varint() if len(keys) != 1 else 0  # noqa: E731
        if code == 15:
            codec, meta = cur.block().decode(), json.loads(cur.block())
        else:
            codec = CODECS[code]
            if codec in ("dense", "sparse"):
                meta = {"stored_dtype": dtype if c == 0 else "float16" if c == 1 else DTYPES[cur.byte()]}
            elif codec == "sparse_codebook":
                i = blob()
                meta = {"key": keys[i], "k": sizes[i] // (8 if c & 2 else 4), "coding": ["own", "shared"][c & 1]}
            elif codec == "surp":
                i = blob()
                start = surp_next.get(i, 0) if c == 1 else cur.varint()
                meta = {
                    "key": keys[i],
                    "offset": start,
                    "norm": struct.unpack("<d", cur.data[cur.pos : cur.pos + 8])[0],
                }
                cur.pos += 8
                surp_next[i] = start + int(np.prod(shape))
            else:
                raise NotImplementedError(codec)
        nbytes = cur.varint()
        tensors.append({"name": name, "shape": shape, "codec": codec, "meta": meta, "offset": offset, "nbytes": nbytes})
        offset += nbytes
    shared = {}
    for key, size in zip(keys, sizes, strict=True):
        shared[key] = [offset, size]
        offset += size
    payload = data[cur.pos : -4]
    assert len(payload) == offset
    return {"tensors": tensors, "shared": shared}, payload


def read(path: Path) -> dict[str, np.ndarray]:
    header, payload = read_container(path)
    out = {}
    for t in header["tensors"]:
        raw, meta, n = payload[t["offset"] : t["offset"] + t["nbytes"]], t["meta"], int(np.prod(t["shape"]))
        if t["codec"] == "dense":
            values = np.frombuffer(
                raw, dtype="<" + {"float32": "f4", "float16": "f2", "int64": "i8"}[meta["stored_dtype"]]
            )
        elif t["codec"] in ("sparse_codebook", "sparse"):
            cur = Cursor(raw)
            coder = constriction.stream.stack.AnsCoder(np.frombuffer(cur.block(), dtype="<u4").astype(np.uint32))
            m, values = cur.varint(), np.zeros(n, dtype=np.float32)
            if m:
                buckets = np.asarray(coder.decode(_model(_dequantized(cur.block())), m), dtype=np.int64)
                bits = np.unpackbits(np.frombuffer(cur.block(), dtype=np.uint8))
                starts, low = np.cumsum(buckets) - buckets, np.zeros(m, dtype=np.int64)
                for j in range(int(buckets.max(initial=0))):  # bit j of every gap that has it, MSB first
                    has = buckets > j
                    low[has] = (low[has] << 1) | bits[starts[has] + j]
                positions = np.cumsum((1 << buckets) + low) - 1
            if t["codec"] == "sparse":
                dtype = "<" + {"float32": "f4", "float16": "f2"}[meta["stored_dtype"]]
                if m:
                    values[positions] = np.frombuffer(raw[cur.pos :], dtype=dtype)
                cur.pos = len(raw)
            elif m:
                offset, size = header["shared"][meta["key"]]
                blob, k = payload[offset : offset + size], meta["k"]
                own = meta["coding"] == "own"
                counts = np.frombuffer(cur.block() if own else blob[4 * k : 8 * k], dtype="<u4")
                indices = np.asarray(coder.decode(_model(counts), m))
                values[positions] = np.frombuffer(blob[: 4 * k], dtype="<f4")[indices]
            assert coder.is_empty()
            assert cur.pos == len(raw)
        else:
            continue
        out[t["name"]] = values.reshape(t["shape"])
    return out


def test_independent_reader_matches_lc_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    codebook = [-0.25, -0.1, 0.05, 0.125, 0.3]
    with torch.no_grad():
        w = net[0].weight
        w.copy_(torch.tensor(codebook)[torch.randint(0, 5, w.shape)] * (torch.rand(w.shape) < 0.1))
        net[2].weight.mul_(torch.rand(net[2].weight.shape) < 0.3)
    codecs = {"0.weight": lc.CodecSpec("sparse_codebook", {"codebook": codebook}), "2.weight": lc.CodecSpec("sparse")}
    path = lc.save(net, tmp_path / "net.lcz", codecs=codecs)
    assert {r.name: r.codec for r in lc.read_artifact(path).tensors}["2.weight"] == "sparse"
    ours = read(path)
    assert {"0.weight", "0.bias", "2.weight", "2.bias"} <= set(ours)
    loaded = lc.load(path, model=torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)))
    for name, tensor in loaded.state_dict().items():
        assert np.array_equal(ours[name], tensor.numpy()), name
