"""The header's checks: every field's type and range, the payload index, and the bound on what a file may decode to.

A hostile or damaged header (with a recomputed checksum) is refused here, naming the field, before anything is built
from it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning_compress.codec.base import available_codecs, stored_dtype_names
from lightning_compress.codec.records import (
    SOURCE_DEFAULT,
    SOURCE_REPRESENTATION,
    SOURCES,
    Artifact,
    ArtifactError,
    TensorRecord,
)
from lightning_compress.codec.registry import known_module_types

__all__ = ["MAX_ELEMENTS", "checked_max_elements", "default_max_elements", "is_count", "parse_header"]

_MAX_DIMS = 8
_STORED_DTYPES = frozenset(stored_dtype_names())
#: Bytes of reader memory one decoded value may need at worst (its float32 tensor, the float64 stream it is decoded
#: from, the state dict and the model it is copied into).
_BYTES_PER_DECODED_VALUE = 16
#: The bound on the values an artifact may decode to, on a machine whose memory is not known (4 GiB of fp32).
MAX_ELEMENTS = 2**30


def default_max_elements() -> int:
    """The values an artifact may decode to when ``max_elements`` is not given: what this machine's memory holds.

    A header cannot make a reader allocate more than the machine has (physical memory over 16 bytes per value); a
    genuine model of that size would not load anyway. Falls back to :data:`MAX_ELEMENTS` where the memory size is
    not known.

    Examples:
        >>> default_max_elements() >= 2**20
        True
    """
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return MAX_ELEMENTS
    return max(2**20, physical // _BYTES_PER_DECODED_VALUE) if physical > 0 else MAX_ELEMENTS


def checked_max_elements(max_elements: Any) -> int:
    """``max_elements`` checked (``None``: :func:`default_max_elements`)."""
    if max_elements is None:
        return default_max_elements()
    if not is_count(max_elements) or max_elements < 1:
        raise ValueError(f"`max_elements` must be None (this machine's memory) or an int >= 1, got {max_elements!r}.")
    return int(max_elements)


def parse_header(
    header: Any, path: Path, version: int, payload: bytes | memoryview, file_bytes: int, max_elements: int
) -> Artifact:
    """The :class:`Artifact` a header describes, every field's type and range checked first (see ``read_artifact``).

    Raises:
        ArtifactError: naming ``path`` and the field.
    """

    def fail(field_name: str, why: str) -> ArtifactError:
        return ArtifactError(f"{path}: header field {field_name!r} {why}")

    if not isinstance(header, dict):
        raise fail("<header>", f"must be a JSON object, got {type(header).__name__}.")
    if header.get("format_version", version) != version:
        raise fail("format_version", f"is {header.get('format_version')!r}, but the file prefix says {version}.")
    architecture = header.get("architecture")
    if architecture is not None:
        if not (isinstance(architecture, dict) and isinstance(architecture.get("name"), str)):
            raise fail("architecture", "must be null or an object with a string 'name'.")
        if not isinstance(architecture.get("kwargs", {}), dict):
            raise fail("architecture.kwargs", "must be an object of builder arguments.")
    modules = header.get("modules", {})
    if not isinstance(modules, dict):
        raise fail("modules", "must be an object (module name -> {type, kwargs}).")
    for name, record in modules.items():
        if not (isinstance(record, dict) and isinstance(record.get("kwargs", {}), dict) and name):
            raise fail(f"modules.{name}", "must be an object with 'type' and 'kwargs'.")
        if record.get("type") not in known_module_types():
            raise fail(f"modules.{name}.type", f"is {record.get('type')!r}; known types: {known_module_types()}.")
    metadata = header.get("metadata", {})
    if not isinstance(metadata, dict):
        raise fail("metadata", "must be an object.")
    reference = header.get("reference_fp32_bytes")
    if reference is not None and not is_count(reference):
        raise fail("reference_fp32_bytes", f"must be null or an int >= 0, got {reference!r}.")
    shared_field = header.get("shared", {})
    if not isinstance(shared_field, dict):
        raise fail("shared", "must be an object (key -> [offset, nbytes]).")
    shared: dict[str, tuple[int, int]] = {}
    for key, extent in shared_field.items():
        if not (isinstance(extent, list) and len(extent) == 2 and all(is_count(v) for v in extent)):
            raise fail(f"shared.{key}", f"must be [offset, nbytes] with ints >= 0, got {extent!r}.")
        shared[key] = (extent[0], extent[1])
    raw_tensors = header.get("tensors")
    if not isinstance(raw_tensors, list):
        raise fail("tensors", "must be a list of tensor records.")
    codecs = set(available_codecs())
    tensors: list[TensorRecord] = []
    names: set[str] = set()
    elements = 0
    for i, t in enumerate(raw_tensors):
        where = f"tensors[{i}]"
        if not isinstance(t, dict):
            raise fail(where, "must be an object.")
        name, shape, meta = t.get("name"), t.get("shape"), t.get("meta")
        if not isinstance(name, str) or not name or name in names:
            raise fail(f"{where}.name", f"must be a unique non-empty string, got {name!r}.")
        names.add(name)
        if not all(isinstance(t.get(k), str) for k in ("role", "dtype", "codec")):
            raise fail(where, "must give 'role', 'dtype' and 'codec' as strings.")
        if t.get("role") not in ("parameter", "buffer"):
            raise fail(f"{where}.role", f"must be 'parameter' or 'buffer', got {t.get('role')!r}.")
        if not (isinstance(shape, list) and len(shape) <= _MAX_DIMS and all(is_count(s) for s in shape)):
            raise fail(f"{where}.shape", f"must be a list of at most {_MAX_DIMS} ints >= 0, got {shape!r}.")
        if t.get("dtype") not in _STORED_DTYPES:
            raise fail(f"{where}.dtype", f"is {t.get('dtype')!r}; stored dtypes: {sorted(_STORED_DTYPES)}.")
        if t.get("codec") not in codecs:
            raise fail(f"{where}.codec", f"is {t.get('codec')!r}; registered codecs: {sorted(codecs)}.")
        if not isinstance(meta, dict):
            raise fail(f"{where}.meta", "must be an object.")
        keys = meta.get("shared_keys", [])
        if not (isinstance(keys, list) and all(isinstance(k, str) and k in shared for k in keys)):
            raise fail(f"{where}.meta.shared_keys", f"must name blobs of 'shared', got {keys!r}.")
        if not (is_count(t.get("offset")) and is_count(t.get("nbytes"))):
            raise fail(f"{where}.offset/nbytes", f"must be ints >= 0, got {t.get('offset')!r}/{t.get('nbytes')!r}.")
        source = t.get("source", SOURCE_REPRESENTATION if t["codec"] != "dense" else SOURCE_DEFAULT)
        if source not in SOURCES:
            raise fail(f"{where}.source", f"is {source!r}; known: {list(SOURCES)}.")
        record = TensorRecord(
            name, t["role"], tuple(shape), t["dtype"], t["codec"], meta, t["offset"], t["nbytes"], source
        )
        elements += record.numel
        if elements > max_elements:
            raise fail(
                f"{where}.shape",
                f"brings the artifact to more than max_elements={max_elements:,} values; pass a larger "
                "`max_elements` to read it if it is genuine.",
            )
        tensors.append(record)
    aliases = header.get("aliases", {})
    if not (
        isinstance(aliases, dict)
        and all(isinstance(a, str) and a and a not in names and n in names for a, n in aliases.items())
    ):
        raise fail("aliases", "must be an object: alias name -> the name of a stored tensor (not itself stored).")
    # The tensors' and blobs' extents must tile the payload exactly: no gap, no overlap, nothing past its end.
    extents = sorted([(r.offset, r.nbytes, r.name) for r in tensors] + [(o, n, k) for k, (o, n) in shared.items()])
    position = 0
    for offset, nbytes, owner in extents:
        if offset != position:
            raise ArtifactError(
                f"{path}: header field 'offset' of {owner!r} is {offset}, expected {position} (payload index broken)."
            )
        position += nbytes
    if position != len(payload):
        raise ArtifactError(f"{path}: payload length {len(payload)} does not match its index ({position} bytes).")
    return Artifact(
        path=path,
        format_version=version,
        architecture=architecture,
        modules=modules,
        reference_fp32_bytes=reference,
        metadata=metadata,
        tensors=tensors,
        file_bytes=file_bytes,
        payload=payload,
        shared=shared,
        aliases=aliases,
    )


def is_count(value: Any) -> bool:
    """An int >= 0 (JSON booleans are not counts)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
