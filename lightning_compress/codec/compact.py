"""Format 3's header: the logical header (format 2's JSON fields) written in a few dozen bytes.

A zoo model's tensors are named by the architecture alone (the builder's registry key and the arguments that differ
from its defaults): names, shapes, dtypes and roles come from the model it builds (on ``meta``), and only what
differs is written. Offsets follow from the order, codec side information is packed by a layout per codec
(:mod:`~lightning_compress.codec.side_info`), and anything a layout cannot say exactly is written as JSON. The layout
is specified in ``docs/format.md``; :func:`encode_header` checks every header it writes by reading it back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from lightning_compress.codec.records import SOURCE_DEFAULT, SOURCE_REPRESENTATION
from lightning_compress.codec.side_info import (
    CODEC_CODES,
    DTYPE_CODES,
    LAYOUTS,
    NAMED_CODEC,
    Blobs,
    ByteReader,
    ByteWriter,
    canonical_json,
    dtype_of,
)
from lightning_compress.codec.template import (
    TemplateTensor,
    TemplateTooLarge,
    architecture_template,
    non_default_kwargs,
    template_fp32_bytes,
)

__all__ = ["SOURCE_CODES", "decode_header", "encode_header"]

#: why a tensor got its codec, by code (bits 6-7 of the detail byte); code 0: the common case (absent from the header).
SOURCE_CODES = (None, "values", "stale", "asked")
_ROLES = ("parameter", "buffer")
# header flags
_ARCHITECTURE, _NAMES, _MODULES, _METADATA, _ALIASES = 1, 2, 16, 32, 64
_REFERENCE_SHIFT = 2  # bits 2-3: 0 null, 1 the template's fp32 bytes, 2 a varint follows
# record head byte
_SHAPE, _DETAIL = 16, 32


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
    w = ByteWriter()
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
        architecture = {"name": name, "kwargs": non_default_kwargs(name, architecture.get("kwargs", {}))}
        try:
            template = architecture_template(architecture)
        except (LookupError, ValueError):
            template = None  # written in full: a reader does not need the architecture to read the file
    names = [t["name"] for t in tensors]
    explicit_names = template is None or names != list(template)
    reference = header.get("reference_fp32_bytes")
    reference_code = 0 if reference is None else 1 if template and reference == template_fp32_bytes(template) else 2
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
        w.block(canonical_json(architecture["kwargs"]).encode() if architecture["kwargs"] else b"")
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
    blobs = Blobs([synthetic[k] for k in keys], [v[1] for v in shared.values()], {})
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
        body = ByteWriter()
        bits, code = 0, NAMED_CODEC
        if t["codec"] in LAYOUTS:
            try:
                bits = LAYOUTS[t["codec"]][0](meta, t["dtype"], math.prod(shape), blobs, body)
                code = CODEC_CODES.index(t["codec"])
            except (KeyError, ValueError, TypeError):
                body = ByteWriter()
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


def _write_shape(w: ByteWriter, shape: tuple[int, ...], known: tuple[int, ...] | None) -> None:
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


def _read_shape(r: ByteReader, name: str, template: Callable[[], dict[str, TemplateTensor]]) -> list[int]:
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
    if end != len(data) or canonical_json(got) != canonical_json(expected):
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
    r = ByteReader(data, start, end)
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
    blobs = Blobs([f"shared-{i}" for i in range(blob_count)], sizes, {})
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
            dtype, role, source = dtype_of(detail & 31), _ROLES[detail >> 5 & 1], SOURCE_CODES[detail >> 6]
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
            meta = LAYOUTS[codec_name][1](bits, dtype, math.prod(shape), blobs, r)
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
        "reference_fp32_bytes": template_fp32_bytes(template()) if reference_code == 1 else reference,
        "shared": shared,
        "aliases": aliases,
        "tensors": tensors,
    }
    return header, r.pos
