"""Format 3's header: the logical header (format 2's JSON fields) written in a few dozen bytes.

A zoo model's tensors are named by the architecture alone (the builder's registry key and the arguments that differ
from its defaults): names, shapes, dtypes and roles come from the model it builds (on ``meta``), and only what
differs is written. Offsets follow from the order, codec side information is packed by a layout per codec
(:data:`CODEC_CODES`), and anything a layout cannot say exactly is written as JSON. The layout is specified in
``docs/format.md``; :func:`encode_header` checks every header it writes by reading it back.
"""

from __future__ import annotations

import inspect
import json
import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from lightning_compress.codec.base import dtype_name, fp32_nbytes
from lightning_compress.codec.records import SOURCE_DEFAULT, SOURCE_REPRESENTATION
from lightning_compress.codec.registry import architecture_builder

__all__ = [
    "CODEC_CODES",
    "DTYPE_CODES",
    "SOURCE_CODES",
    "TemplateTensor",
    "TemplateTooLarge",
    "architecture_template",
    "decode_header",
    "encode_header",
]

#: Codecs with a packed layout, by their code (bits 0-3 of a record's head byte); code 15: named, JSON side info.
CODEC_CODES = ("dense", "sparse", "codebook", "sparse_codebook", "ternary", "surp")
NAMED_CODEC = 15
#: dtypes by code (bits 0-4 of a record's detail byte).
DTYPE_CODES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
#: why a tensor got its codec, by code (bits 6-7 of the detail byte); code 0: the common case (absent from the header).
SOURCE_CODES = (None, "values", "stale", "asked")
_ROLES = ("parameter", "buffer")
_TERNARY_CODINGS = ("packed", "ans", "seed")
_CODEBOOK_CODINGS = ("fixed", "own", "shared")
_SEED_GENERATOR = "numpy.RandomState"
# header flags
_ARCHITECTURE, _NAMES, _MODULES, _METADATA, _ALIASES = 1, 2, 16, 32, 64
_REFERENCE_SHIFT = 2  # bits 2-3: 0 null, 1 the template's fp32 bytes, 2 a varint follows
# record head byte
_SHAPE, _DETAIL = 16, 32
_MAX_VARINT_BYTES = 9  # values below 2**63
_F64 = struct.Struct("<d")


@dataclass(frozen=True)
class TemplateTensor:
    """One tensor of the model an architecture builds: what a format-3 record does not repeat."""

    shape: tuple[int, ...]
    dtype: str
    role: str


def architecture_template(architecture: Mapping[str, Any]) -> dict[str, TemplateTensor]:
    """The tensors (in ``state_dict`` order) of the model a header's architecture builds, built on ``meta``.

    Path arguments (``weights_path``, ...) are left out, as :func:`~lightning_compress.load` does: a file never
    makes the reader open another file.

    Raises:
        LookupError: the architecture is not registered.
        ValueError: its arguments do not build it.

    Examples:
        >>> import lightning_compress  # registers the zoo
        >>> list(architecture_template({"name": "lenet_300_100", "kwargs": {"hidden": [8, 4]}}).items())[0]
        ('fc1.weight', TemplateTensor(shape=(8, 784), dtype='float32', role='parameter'))
    """
    name, kwargs = architecture.get("name"), architecture.get("kwargs", {})
    builder = architecture_builder(name) if isinstance(name, str) else None
    if builder is None or not isinstance(kwargs, dict):
        raise LookupError(f"architecture {name!r} is not registered (import the module that registers it).")
    usable = json.dumps({k: v for k, v in kwargs.items() if not str(k).endswith("_path")}, sort_keys=True)
    return dict(_template(name, id(builder), usable))


@lru_cache(maxsize=32)  # every trial artifact of a fit asks for the same one
def _template(name: str, builder_id: int, kwargs_json: str) -> tuple[tuple[str, TemplateTensor], ...]:
    builder = architecture_builder(name)
    if builder is None or id(builder) != builder_id:  # re-registered since: the caller asks again
        raise LookupError(f"architecture {name!r} changed while it was built")
    try:
        with torch.device("meta"):
            model = builder(**json.loads(kwargs_json))
        parameters = {n for n, _ in model.named_parameters(remove_duplicate=False)}
        return tuple(
            (n, TemplateTensor(tuple(t.shape), dtype_name(t.dtype), "parameter" if n in parameters else "buffer"))
            for n, t in model.state_dict(keep_vars=True).items()
        )
    except Exception as err:
        raise ValueError(f"does not build {name!r}: {type(err).__name__}: {err}") from err


def _template_fp32_bytes(template: Mapping[str, TemplateTensor]) -> int:
    return sum(fp32_nbytes(math.prod(t.shape), getattr(torch, t.dtype)) for t in template.values())


def _non_default_kwargs(name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` without the arguments equal to the builder's defaults (compared as JSON)."""
    builder = architecture_builder(name)
    try:
        parameters = inspect.signature(builder).parameters if builder is not None else {}
    except (TypeError, ValueError):
        return dict(kwargs)
    kept = {}
    for key, value in kwargs.items():
        default = parameters[key].default if key in parameters else inspect.Parameter.empty
        try:
            same = default is not inspect.Parameter.empty and json.dumps(default) == json.dumps(value)
        except (TypeError, ValueError):
            same = False
        if not same:
            kept[key] = value
    return kept


class _Writer:
    def __init__(self) -> None:
        self.parts = bytearray()

    def varint(self, value: int) -> None:
        if value < 0 or value >= 2**63:
            raise ValueError(f"format 3 varints hold 0 <= v < 2**63, got {value}.")
        while True:
            low, value = value & 0x7F, value >> 7
            self.parts.append(low | (0x80 if value else 0))
            if not value:
                return

    def block(self, data: bytes) -> None:
        self.varint(len(data))
        self.parts += data

    def json(self, value: Any) -> None:
        self.block(json.dumps(value, separators=(",", ":"), sort_keys=True).encode())


class _Reader:
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
class _Blobs:
    """The shared blobs as a record's side information refers to them: by index, with sizes and SuRP slices."""

    keys: list[str]
    sizes: list[int]
    surp_next: dict[int, int]  # blob index -> the offset the next tensor of that SuRP stream starts at, if in order


def _canonical(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _blob_index(meta: Mapping[str, Any], blobs: _Blobs) -> int:
    key = meta.get("key")
    if key not in blobs.keys or meta.get("shared_keys") != [key]:
        raise KeyError("not a single-blob reference")
    return blobs.keys.index(key)


def _book_index(meta: Mapping[str, Any], blobs: _Blobs) -> int:
    """The codebook blob a record uses, when its ``k`` is what the blob's size says (else its layout cannot hold it)."""
    if set(meta) != {"key", "k", "coding", "has_counts", "shared_keys"} or not isinstance(meta["has_counts"], bool):
        raise KeyError("other fields")
    index = _blob_index(meta, blobs)
    width = 8 if meta["has_counts"] else 4
    k = meta["k"]
    if isinstance(k, bool) or k != blobs.sizes[index] // width or blobs.sizes[index] % width:
        raise ValueError("k is not the blob's")
    return index


def _write_blob(w: _Writer, index: int, blobs: _Blobs) -> None:
    if len(blobs.keys) != 1:  # one blob in the file: implied
        w.varint(index)


def _read_blob(r: _Reader, blobs: _Blobs) -> int:
    index = r.varint() if len(blobs.keys) != 1 else 0
    if index >= len(blobs.keys):
        raise ValueError(f"shared blob {index} of {len(blobs.keys)}")
    return index


# Each codec's packed side information: (meta, record dtype, numel, blobs) -> (two bits, bytes), and back. A packer
# raises KeyError/ValueError/TypeError for a meta its layout cannot say: the record is then written with JSON.
_Pack = Callable[[Mapping[str, Any], str, int, _Blobs, _Writer], int]
_Unpack = Callable[[int, str, int, _Blobs, _Reader], dict[str, Any]]


def _pack_stored(meta: Mapping[str, Any], dtype: str, numel: int, blobs: _Blobs, w: _Writer) -> int:
    stored = meta["stored_dtype"]
    if set(meta) != {"stored_dtype"}:
        raise KeyError("other fields")
    if stored == dtype:
        return 0
    if stored == "float16":
        return 1
    w.parts.append(DTYPE_CODES.index(stored))
    return 2


def _unpack_stored(bits: int, dtype: str, numel: int, blobs: _Blobs, r: _Reader) -> dict[str, Any]:
    if bits == 3:
        raise ValueError("stored dtype code 3")
    stored = dtype if bits == 0 else "float16" if bits == 1 else _dtype(r.byte())
    return {"stored_dtype": stored}


def _pack_codebook(meta: Mapping[str, Any], dtype: str, numel: int, blobs: _Blobs, w: _Writer) -> int:
    index = _book_index(meta, blobs)
    w.varint(2 * index + meta["has_counts"])
    return _CODEBOOK_CODINGS.index(meta["coding"])


def _unpack_codebook(bits: int, dtype: str, numel: int, blobs: _Blobs, r: _Reader) -> dict[str, Any]:
    if bits == 3:
        raise ValueError("codebook coding 3")
    j = r.varint()
    index, has_counts = j >> 1, bool(j & 1)
    if index >= len(blobs.keys):
        raise ValueError(f"shared blob {index} of {len(blobs.keys)}")
    return _book(blobs, index, has_counts, _CODEBOOK_CODINGS[bits])


def _book(blobs: _Blobs, index: int, has_counts: bool, coding: str) -> dict[str, Any]:
    key = blobs.keys[index]
    # k follows from the blob: k float32 values, then k uint32 counts when it has them
    return {"key": key, "k": blobs.sizes[index] // (8 if has_counts else 4), "coding": coding,
            "has_counts": has_counts, "shared_keys": [key]}  # fmt: skip


def _pack_sparse_codebook(meta: Mapping[str, Any], dtype: str, numel: int, blobs: _Blobs, w: _Writer) -> int:
    index = _book_index(meta, blobs)
    _write_blob(w, index, blobs)
    return ("own", "shared").index(meta["coding"]) + 2 * meta["has_counts"]


def _unpack_sparse_codebook(bits: int, dtype: str, numel: int, blobs: _Blobs, r: _Reader) -> dict[str, Any]:
    return _book(blobs, _read_blob(r, blobs), bool(bits & 2), ("own", "shared")[bits & 1])


def _pack_ternary(meta: Mapping[str, Any], dtype: str, numel: int, blobs: _Blobs, w: _Writer) -> int:
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


def _unpack_ternary(bits: int, dtype: str, numel: int, blobs: _Blobs, r: _Reader) -> dict[str, Any]:
    if bits == 2:
        seed = r.varint()
        return {"coding": "seed", "seed": seed, "sparsity": r.f64(), "generator": _SEED_GENERATOR}
    if bits == 3:
        raise ValueError("ternary coding 3")
    j = r.varint()
    return {"coding": _TERNARY_CODINGS[bits], "per_channel": bool(j & 1), "rows": j >> 1}


def _pack_surp(meta: Mapping[str, Any], dtype: str, numel: int, blobs: _Blobs, w: _Writer) -> int:
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


def _unpack_surp(bits: int, dtype: str, numel: int, blobs: _Blobs, r: _Reader) -> dict[str, Any]:
    if bits > 1:
        raise ValueError(f"surp bits {bits}")
    index = _read_blob(r, blobs)
    offset = blobs.surp_next.get(index, 0) if bits else r.varint()
    blobs.surp_next[index] = offset + numel
    key = blobs.keys[index]
    return {"key": key, "offset": offset, "norm": r.f64(), "shared_keys": [key]}


_LAYOUTS: dict[str, tuple[_Pack, _Unpack]] = {
    "dense": (_pack_stored, _unpack_stored),
    "sparse": (_pack_stored, _unpack_stored),
    "codebook": (_pack_codebook, _unpack_codebook),
    "sparse_codebook": (_pack_sparse_codebook, _unpack_sparse_codebook),
    "ternary": (_pack_ternary, _unpack_ternary),
    "surp": (_pack_surp, _unpack_surp),
}


def _dtype(code: int) -> str:
    if code >= len(DTYPE_CODES):
        raise ValueError(f"dtype code {code}")
    return DTYPE_CODES[code]


def _common_source(codec: str) -> str:
    return SOURCE_DEFAULT if codec == "dense" else SOURCE_REPRESENTATION


def _shared_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def encode_header(header: Mapping[str, Any]) -> bytes:
    """Format 3's bytes of a logical header (the fields :func:`~lightning_compress.codec.header.parse_header` reads).

    The tensors' extents must tile the payload in order, then the shared blobs in order (as the writer lays them).

    Raises:
        ValueError: for a header format 3 cannot hold (extents out of order) or that does not read back the same.
    """
    w = _Writer()
    architecture = header.get("architecture")
    tensors: list[Mapping[str, Any]] = list(header["tensors"])
    shared: dict[str, list[int]] = dict(sorted(header.get("shared", {}).items(), key=lambda kv: kv[1][0]))
    position = 0
    for at, nbytes in [(t["offset"], t["nbytes"]) for t in tensors] + [(v[0], v[1]) for v in shared.values()]:
        if at != position:
            raise ValueError("format 3 needs the tensors' and blobs' extents in order")
        position += nbytes
    template: dict[str, TemplateTensor] | None = None
    if architecture is not None:
        name = architecture["name"]
        architecture = {"name": name, "kwargs": _non_default_kwargs(name, architecture.get("kwargs", {}))}
        try:
            template = architecture_template(architecture)
        except (LookupError, ValueError):
            template = None  # written in full: a reader does not need the architecture to read the file
    names = [t["name"] for t in tensors]
    explicit_names = template is None or names != list(template)
    reference = header.get("reference_fp32_bytes")
    reference_code = 0 if reference is None else 1 if template and reference == _template_fp32_bytes(template) else 2
    modules, metadata, aliases = header.get("modules") or {}, header.get("metadata") or {}, header.get("aliases") or {}
    flags = (
        (_ARCHITECTURE if architecture is not None else 0)
        | (_NAMES if explicit_names else 0)
        | reference_code << _REFERENCE_SHIFT
        | (_MODULES if modules else 0)
        | (_METADATA if metadata else 0)
        | (_ALIASES if aliases else 0)
    )
    w.varint(flags)
    if architecture is not None:
        w.block(architecture["name"].encode())
        w.block(_canonical(architecture["kwargs"]).encode() if architecture["kwargs"] else b"")
    if reference is not None and reference_code == 2:
        w.varint(reference)
    for value in (modules, metadata, aliases):
        if value:
            w.json(value)
    keys = list(shared)
    synthetic = {key: f"shared-{i}" for i, key in enumerate(keys)}
    w.varint(len(keys))
    for extent in shared.values():
        w.varint(extent[1])
    blobs = _Blobs([synthetic[k] for k in keys], [v[1] for v in shared.values()], {})
    w.varint(len(tensors))
    previous = ""
    for t in tensors:
        meta = _renamed(t["meta"], synthetic)
        known = template.get(t["name"]) if template is not None else None
        if explicit_names:
            common = _shared_prefix(previous, t["name"])
            w.varint(common)
            w.block(t["name"][common:].encode())
            previous = t["name"]
        source = t.get("source", _common_source(t["codec"]))
        source_code = 0 if source == _common_source(t["codec"]) else SOURCE_CODES.index(source)
        detail = known is None or known.dtype != t["dtype"] or known.role != t["role"] or source_code != 0
        shape = tuple(t["shape"])
        head = (_SHAPE if known is None or known.shape != shape else 0) | (_DETAIL if detail else 0)
        body = _Writer()
        bits, code = 0, NAMED_CODEC
        if t["codec"] in _LAYOUTS:
            try:
                bits = _LAYOUTS[t["codec"]][0](meta, t["dtype"], math.prod(shape), blobs, body)
                code = CODEC_CODES.index(t["codec"])
            except (KeyError, ValueError, TypeError):
                body = _Writer()
        if code == NAMED_CODEC:
            body.block(t["codec"].encode())
            body.json(meta)
        w.parts.append(head | code | bits << 6)
        if detail:
            w.parts.append(DTYPE_CODES.index(t["dtype"]) | _ROLES.index(t["role"]) << 5 | source_code << 6)
        if head & _SHAPE:
            _write_shape(w, shape, known.shape if known is not None else None)
        w.parts += body.parts
        w.varint(t["nbytes"])
    data = bytes(w.parts)
    _check_round_trip(data, header, architecture, synthetic)
    return data


def _renamed(meta: Any, synthetic: Mapping[str, str]) -> Any:
    """``meta`` with the shared blobs' keys replaced by the names format 3 gives them (``shared-<index>``)."""
    if isinstance(meta, str):
        return synthetic.get(meta, meta)
    if isinstance(meta, list):
        return [_renamed(v, synthetic) for v in meta]
    if isinstance(meta, dict):
        return {k: _renamed(v, synthetic) for k, v in meta.items()}
    return meta


def _write_shape(w: _Writer, shape: tuple[int, ...], known: tuple[int, ...] | None) -> None:
    """A shape as the dimensions that differ from the template's (a bit mask, then those), or in full (mask 0)."""
    if known is not None and len(known) == len(shape) and shape != known:
        mask = sum(1 << i for i, (a, b) in enumerate(zip(shape, known, strict=True)) if a != b)
        w.varint(mask)
        for i, size in enumerate(shape):
            if mask >> i & 1:
                w.varint(size)
        return
    w.varint(0)
    w.varint(len(shape))
    for size in shape:
        w.varint(size)


def _read_shape(r: _Reader, name: str, template: Callable[[], dict[str, TemplateTensor]]) -> list[int]:
    mask = r.varint()
    if mask == 0:
        ndim = r.varint()
        if ndim > 8:
            raise ValueError(f"a shape of {ndim} dimensions")
        return [r.varint() for _ in range(ndim)]
    entry = template().get(name)
    if entry is None or mask >> len(entry.shape):
        raise ValueError("a shape relative to a template that has no such dimensions")
    return [r.varint() if mask >> i & 1 else size for i, size in enumerate(entry.shape)]


def _check_round_trip(
    data: bytes, header: Mapping[str, Any], architecture: Mapping[str, Any] | None, synthetic: Mapping[str, str]
) -> None:
    """The header read back must say what was written (architecture defaults and blob keys as format 3 says them)."""
    expected = {
        "architecture": architecture,
        "modules": header.get("modules") or {},
        "metadata": header.get("metadata") or {},
        "reference_fp32_bytes": header.get("reference_fp32_bytes"),
        "shared": {synthetic[k]: list(v) for k, v in header.get("shared", {}).items()},
        "aliases": header.get("aliases") or {},
        "tensors": [_expected_record(t, synthetic) for t in header["tensors"]],
    }
    got, end = decode_header(data, 0, len(data), max_elements=2**62)
    got.pop("format_version")
    if end != len(data) or _canonical(got) != _canonical(expected):
        raise ValueError("format 3 header does not read back as written (a bug: please report it)")


def _expected_record(record: Mapping[str, Any], synthetic: Mapping[str, str]) -> dict[str, Any]:
    expected = {k: _renamed(v, synthetic) if k == "meta" else v for k, v in record.items()}
    if expected.get("source") == _common_source(record["codec"]):
        del expected["source"]
    return expected


def decode_header(data: bytes | memoryview, start: int, end: int, *, max_elements: int) -> tuple[dict[str, Any], int]:
    """The logical header of format-3 bytes ``data[start:end]``, and where the header ends (the payload starts).

    Raises:
        ValueError: the bytes are not a format-3 header (the reader names the file).
        LookupError: the tensors are named by an architecture that is not registered here.
        TemplateTooLarge: the architecture builds a model of more than ``max_elements`` values.
    """
    r = _Reader(data, start, end)
    flags = r.varint()
    if flags >= 128 or (flags >> _REFERENCE_SHIFT & 3) == 3:
        raise ValueError(f"unknown header flags {flags:#x}")
    architecture = None
    if flags & _ARCHITECTURE:
        name = r.block().decode()
        kwargs_text = r.block()
        architecture = {"name": name, "kwargs": json.loads(kwargs_text.decode()) if kwargs_text else {}}
        if not isinstance(architecture["kwargs"], dict):
            raise ValueError("architecture arguments that are not an object")
    built: list[dict[str, TemplateTensor]] = []

    def template() -> dict[str, TemplateTensor]:  # built only when a record relies on it
        if not built:
            if architecture is None:
                raise ValueError("records rely on an architecture, and the header names none")
            tensors = architecture_template(architecture)
            elements = sum(math.prod(t.shape) for t in tensors.values())
            if elements > max_elements:
                raise TemplateTooLarge(elements)
            built.append(tensors)
        return built[0]

    reference_code = flags >> _REFERENCE_SHIFT & 3
    reference = r.varint() if reference_code == 2 else None
    modules = r.json() if flags & _MODULES else {}
    metadata = r.json() if flags & _METADATA else {}
    aliases = r.json() if flags & _ALIASES else {}
    blob_count = r.varint()
    if blob_count > end - r.pos:
        raise ValueError(f"{blob_count} shared blobs in a header of {end - start} bytes")
    sizes = [r.varint() for _ in range(blob_count)]
    blobs = _Blobs([f"shared-{i}" for i in range(blob_count)], sizes, {})
    count = r.varint()
    names = None if flags & _NAMES else list(template())
    if names is not None and count != len(names):
        raise ValueError(f"{count} records for an architecture of {len(names)} tensors")
    if count > end - r.pos:
        raise ValueError(f"{count} records in a header of {end - start} bytes")
    tensors: list[dict[str, Any]] = []
    offset, previous = 0, ""
    for i in range(count):
        if names is None:
            common = r.varint()
            if common > len(previous):
                raise ValueError(f"record {i} shares {common} characters with a name of {len(previous)}")
            name = previous[:common] + r.block().decode()
            previous = name
        else:
            name = names[i]
        head = r.byte()
        code, bits = head & 15, head >> 6
        known = None if head & _SHAPE and head & _DETAIL else template().get(name)
        if known is None and not (head & _SHAPE and head & _DETAIL):
            raise ValueError(f"record {i} ({name!r}) relies on the architecture, which has no such tensor")
        if head & _DETAIL:
            detail = r.byte()
            dtype, role, source = _dtype(detail & 31), _ROLES[detail >> 5 & 1], SOURCE_CODES[detail >> 6]
        elif known is not None:
            dtype, role, source = known.dtype, known.role, None
        if head & _SHAPE:
            shape = _read_shape(r, name, template)
        elif known is not None:
            shape = list(known.shape)
        if code == NAMED_CODEC:
            codec_name = r.block().decode()
            meta = r.json()
        elif code < len(CODEC_CODES):
            codec_name = CODEC_CODES[code]
            meta = _LAYOUTS[codec_name][1](bits, dtype, math.prod(shape), blobs, r)
        else:
            raise ValueError(f"codec code {code}")
        nbytes = r.varint()
        record = {"name": name, "role": role, "shape": shape, "dtype": dtype, "codec": codec_name, "meta": meta,
                  "offset": offset, "nbytes": nbytes}  # fmt: skip
        if source is not None:
            record["source"] = source
        tensors.append(record)
        offset += nbytes
    shared = {}
    for key, size in zip(blobs.keys, sizes, strict=True):
        shared[key] = [offset, size]
        offset += size
    header = {
        "format_version": 3,
        "architecture": architecture,
        "modules": modules,
        "metadata": metadata,
        "reference_fp32_bytes": _template_fp32_bytes(template()) if reference_code == 1 else reference,
        "shared": shared,
        "aliases": aliases,
        "tensors": tensors,
    }
    return header, r.pos


class TemplateTooLarge(ValueError):
    """The architecture a header names builds a model of more values than the reader allows."""

    def __init__(self, elements: int) -> None:
        super().__init__(f"the architecture builds a model of {elements:,} values")
        self.elements = elements
