"""An independent reader of `dense`, `sparse_codebook` and `sparse` tensors, written from docs/format.md alone.

Standard library, NumPy and constriction only (nothing from lightning_compress is imported to read); checked against
``lc.load`` on a pruned and shared network.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import zlib
from pathlib import Path

import constriction
import numpy as np
import torch

import lightning_compress as lc

SPEC = Path(__file__).resolve().parents[1] / "docs" / "format.md"


def _zdict() -> bytes:  # the preset dictionary, as the spec prints it
    block = re.search(r"ZDICT_V2 = \(\n(.*?)\n\)", SPEC.read_text(), re.DOTALL)
    assert block is not None
    return b"".join(eval(line.strip()) for line in block.group(1).splitlines())  # noqa: S307 - bytes literals


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


def _model(counts: np.ndarray) -> object:
    p = np.asarray(counts, dtype=np.float64)
    p = np.append(p, 0.0) if p.size < 2 else p
    return constriction.stream.model.Categorical(p / p.sum(), perfect=False)


def _dequantized(codes: bytes) -> np.ndarray:
    c = np.frombuffer(codes, dtype=np.uint8).astype(np.int64)
    return np.where(c < 16, c, (8 + (c - 16) % 8) << np.maximum((c - 16) // 8 + 1, 0))


def read_container(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    magic, version, header_len = struct.unpack_from("<4sHI", data)
    assert magic == b"LCZ\x89"
    assert version == 2
    assert hashlib.sha256(data[:-32]).digest() == data[-32:]
    inflate = zlib.decompressobj(zdict=_zdict())
    header = json.loads(inflate.decompress(data[10 : 10 + header_len]) + inflate.flush())
    return header, data[10 + header_len : -32]


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
