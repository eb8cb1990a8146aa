"""Format 3's packed side information: each built-in codec's ``meta`` in a few bits and bytes, and the byte cursor.

A record's head byte gives two bits to its codec; the layout of each codec is specified in ``docs/format.md``. A
packer raises ``KeyError``/``ValueError``/``TypeError`` for a ``meta`` its layout cannot say exactly: the writer then
writes that record's ``meta`` as JSON.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lightning_compress.codec.entropy import leb128

__all__ = [
    "CODEC_CODES",
    "DTYPE_CODES",
    "LAYOUTS",
    "NAMED_CODEC",
    "Blobs",
    "ByteReader",
    "ByteWriter",
    "canonical_json",
    "dtype_of",
]

#: Codecs with a packed layout, by their code (bits 0-3 of a record's head byte); code 15: named, JSON side info.
CODEC_CODES = ("dense", "sparse", "codebook", "sparse_codebook", "ternary", "surp")
NAMED_CODEC = 15
#: dtypes by code (bits 0-4 of a record's detail byte).
DTYPE_CODES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
_TERNARY_CODINGS = ("packed", "ans", "seed")
_CODEBOOK_CODINGS = ("fixed", "own", "shared")
_SEED_GENERATOR = "numpy.RandomState"
_MAX_VARINT_BYTES = 9  # values below 2**63
_F64 = struct.Struct("<d")


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys: how format 3 writes JSON, and compares what it read back."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class ByteWriter:
    """Bytes appended: varints, blocks, JSON."""

    def __init__(self) -> None:
        self.parts = bytearray()

    def varint(self, value: int) -> None:
        if value < 0 or value >= 2**63:
            raise ValueError(f"format 3 varints hold 0 <= v < 2**63, got {value}.")
        self.parts += leb128([value])

    def block(self, data: bytes) -> None:
        self.varint(len(data))
        self.parts += data

    def json(self, value: Any) -> None:
        self.block(canonical_json(value).encode())


class ByteReader:
    """Reads ``data[pos:end]``; every length is bounded by the bytes left."""

    def __init__(self, data: bytes | memoryview, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise ValueError("the header runs past the end of the file")
        self.pos += 1
        return int(self.data[self.pos - 1])

    def varint(self) -> int:
        value = 0
        for i in range(_MAX_VARINT_BYTES):
            byte = self.byte()
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                return value
        raise ValueError("a varint longer than 9 bytes")

    def block(self) -> bytes:
        size = self.varint()
        if size > self.end - self.pos:
            raise ValueError("a block runs past the end of the file")
        self.pos += size
        return bytes(self.data[self.pos - size : self.pos])

    def f64(self) -> float:
        if self.end - self.pos < 8:
            raise ValueError("a float64 runs past the end of the file")
        self.pos += 8
        return float(_F64.unpack_from(self.data, self.pos - 8)[0])

    def json(self) -> Any:
        return json.loads(self.block().decode())


@dataclass
class Blobs:
    """The shared blobs as a record's side information refers to them: by index, with sizes and SuRP slices."""

    keys: list[str]
    sizes: list[int]
    surp_next: dict[int, int]  # blob index -> the offset the next tensor of that SuRP stream starts at, if in order


def _blob_index(meta: Mapping[str, Any], blobs: Blobs) -> int:
    key = meta.get("key")
    if key not in blobs.keys or meta.get("shared_keys") != [key]:
        raise KeyError("not a single-blob reference")
    return blobs.keys.index(key)


def _book_index(meta: Mapping[str, Any], blobs: Blobs) -> int:
    """The codebook blob a record uses, when its ``k`` is what the blob's size says (else its layout cannot hold it)."""
    if set(meta) != {"key", "k", "coding", "has_counts", "shared_keys"} or not isinstance(meta["has_counts"], bool):
        raise KeyError("other fields")
    index = _blob_index(meta, blobs)
    width = 8 if meta["has_counts"] else 4
    k = meta["k"]
    if isinstance(k, bool) or k != blobs.sizes[index] // width or blobs.sizes[index] % width:
        raise ValueError("k is not the blob's")
    return index


def _write_blob(w: ByteWriter, index: int, blobs: Blobs) -> None:
    if len(blobs.keys) != 1:  # one blob in the file: implied
        w.varint(index)


def _read_blob(r: ByteReader, blobs: Blobs) -> int:
    index = r.varint() if len(blobs.keys) != 1 else 0
    if index >= len(blobs.keys):
        raise ValueError(f"shared blob {index} of {len(blobs.keys)}")
    return index


# Each codec's packed side information: (meta, record dtype, numel, blobs) -> (two bits, bytes), and back. A packer
# raises KeyError/ValueError/TypeError for a meta its layout cannot say: the record is then written with JSON.
_Pack = Callable[[Mapping[str, Any], str, int, Blobs, ByteWriter], int]
_Unpack = Callable[[int, str, int, Blobs, ByteReader], dict[str, Any]]


def _pack_stored(meta: Mapping[str, Any], dtype: str, numel: int, blobs: Blobs, w: ByteWriter) -> int:
    stored = meta["stored_dtype"]
    if set(meta) != {"stored_dtype"}:
        raise KeyError("other fields")
    if stored == dtype:
        return 0
    if stored == "float16":
        return 1
    w.parts.append(DTYPE_CODES.index(stored))
    return 2


def _unpack_stored(bits: int, dtype: str, numel: int, blobs: Blobs, r: ByteReader) -> dict[str, Any]:
    if bits == 3:
        raise ValueError("stored dtype code 3")
    stored = dtype if bits == 0 else "float16" if bits == 1 else dtype_of(r.byte())
    return {"stored_dtype": stored}


def _pack_codebook(meta: Mapping[str, Any], dtype: str, numel: int, blobs: Blobs, w: ByteWriter) -> int:
    index = _book_index(meta, blobs)
    w.varint(2 * index + meta["has_counts"])
    return _CODEBOOK_CODINGS.index(meta["coding"])


def _unpack_codebook(bits: int, dtype: str, numel: int, blobs: Blobs, r: ByteReader) -> dict[str, Any]:
    if bits == 3:
        raise ValueError("codebook coding 3")
    j = r.varint()
    index, has_counts = j >> 1, bool(j & 1)
    if index >= len(blobs.keys):
        raise ValueError(f"shared blob {index} of {len(blobs.keys)}")
    return _book(blobs, index, has_counts, _CODEBOOK_CODINGS[bits])


def _book(blobs: Blobs, index: int, has_counts: bool, coding: str) -> dict[str, Any]:
    key = blobs.keys[index]
    # k follows from the blob: k float32 values, then k uint32 counts when it has them
    return {"key": key, "k": blobs.sizes[index] // (8 if has_counts else 4), "coding": coding,
            "has_counts": has_counts, "shared_keys": [key]}  # fmt: skip


def _pack_sparse_codebook(meta: Mapping[str, Any], dtype: str, numel: int, blobs: Blobs, w: ByteWriter) -> int:
    index = _book_index(meta, blobs)
    _write_blob(w, index, blobs)
    return ("own", "shared").index(meta["coding"]) + 2 * meta["has_counts"]


def _unpack_sparse_codebook(bits: int, dtype: str, numel: int, blobs: Blobs, r: ByteReader) -> dict[str, Any]:
    return _book(blobs, _read_blob(r, blobs), bool(bits & 2), ("own", "shared")[bits & 1])


def _pack_ternary(meta: Mapping[str, Any], dtype: str, numel: int, blobs: Blobs, w: ByteWriter) -> int:
    coding = meta["coding"]
    if coding == "seed":
        if set(meta) != {"coding", "seed", "sparsity", "generator"} or meta["generator"] != _SEED_GENERATOR:
            raise KeyError("other fields")
        if not isinstance(meta["sparsity"], float) or isinstance(meta["seed"], bool):
            raise TypeError("seed/sparsity")
        w.varint(meta["seed"])
        w.parts += _F64.pack(meta["sparsity"])
        return 2
    if set(meta) != {"coding", "per_channel", "rows"} or not isinstance(meta["per_channel"], bool):
        raise KeyError("other fields")
    if isinstance(meta["rows"], bool):
        raise TypeError("rows")
    w.varint(2 * meta["rows"] + meta["per_channel"])
    return _TERNARY_CODINGS.index(coding)


def _unpack_ternary(bits: int, dtype: str, numel: int, blobs: Blobs, r: ByteReader) -> dict[str, Any]:
    if bits == 2:
        seed = r.varint()
        return {"coding": "seed", "seed": seed, "sparsity": r.f64(), "generator": _SEED_GENERATOR}
    if bits == 3:
        raise ValueError("ternary coding 3")
    j = r.varint()
    return {"coding": _TERNARY_CODINGS[bits], "per_channel": bool(j & 1), "rows": j >> 1}


def _pack_surp(meta: Mapping[str, Any], dtype: str, numel: int, blobs: Blobs, w: ByteWriter) -> int:
    if set(meta) != {"key", "offset", "norm", "shared_keys"} or not isinstance(meta["norm"], float):
        raise KeyError("other fields")
    index, offset = _blob_index(meta, blobs), meta["offset"]
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError("offset")
    _write_blob(w, index, blobs)
    in_order = offset == blobs.surp_next.get(index, 0)
    if not in_order:
        w.varint(offset)
    w.parts += _F64.pack(meta["norm"])
    blobs.surp_next[index] = offset + numel
    return int(in_order)


def _unpack_surp(bits: int, dtype: str, numel: int, blobs: Blobs, r: ByteReader) -> dict[str, Any]:
    if bits > 1:
        raise ValueError(f"surp bits {bits}")
    index = _read_blob(r, blobs)
    offset = blobs.surp_next.get(index, 0) if bits else r.varint()
    blobs.surp_next[index] = offset + numel
    key = blobs.keys[index]
    return {"key": key, "offset": offset, "norm": r.f64(), "shared_keys": [key]}


LAYOUTS: dict[str, tuple[_Pack, _Unpack]] = {
    "dense": (_pack_stored, _unpack_stored),
    "sparse": (_pack_stored, _unpack_stored),
    "codebook": (_pack_codebook, _unpack_codebook),
    "sparse_codebook": (_pack_sparse_codebook, _unpack_sparse_codebook),
    "ternary": (_pack_ternary, _unpack_ternary),
    "surp": (_pack_surp, _unpack_surp),
}


def dtype_of(code: int) -> str:
    """The dtype name of a code of :data:`DTYPE_CODES`.

    Raises:
        ValueError: for a code outside the table.
    """
    if code >= len(DTYPE_CODES):
        raise ValueError(f"dtype code {code}")
    return DTYPE_CODES[code]
