r"""The ``.lcz`` frame: magic, version, compressed header, payloads and checksum, and the atomic write.

Layout (all integers little-endian)::

    magic b"LCZ\\x89" | format version (u16) | header length (u32) | header | payloads | SHA-256 of all preceding bytes

The header is JSON, zlib-compressed with a preset dictionary of its own keys (format 2; format 1, plain zlib, is
still read). What the header says is checked in :mod:`~lightning_compress.codec.header`.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_compress.codec.records import ArtifactError

__all__ = ["DIGEST_BYTES", "FORMAT_VERSION", "MAGIC", "PREFIX", "atomic_write", "frame", "unframe"]

MAGIC = b"LCZ\x89"
FORMAT_VERSION = 2
PREFIX = struct.Struct("<4sHI")
#: zlib preset dictionary of format 2: the strings every header repeats. A header is a few hundred bytes, and
#: without a dictionary deflate cannot refer back to them (tests/test_codec.py checks the saving on LeNet-300-100).
#: Never edit it: a different dictionary is a new format version.
HEADER_ZDICT_V2 = (
    b'"offset":0,"role":"buffer","shape":[],"nbytes":,"role":"parameter","shape":[],"name":".running_mean"'
    b'"name":".running_var""name":".num_batches_tracked""dtype":"int64""codec":"ternary""codec":"codebook"'
    b'"codec":"dense","dtype":"float32","meta":{"precision":"float32"}"codec":"surp","dtype":"float32",'
    b'"meta":{"key":"surp-","norm":0.,"offset":0,"shared_keys":["surp-"]},"name":".bias","nbytes":0,"offset":0,'
    b'"role":"parameter","shape":[]},{"codec":"surp","dtype":"float32","meta":{"key":"surp-","norm":0.'
    b'"architecture":{"kwargs":{"in_shape":[1,28,28],"num_classes":10},"name":"lenet_300_100"},"format_version":2,'
    b'"library_version":"0.1.0","metadata":{"tags":["task_name":"val/acc":0.,"val/loss":0.},"modules":{},'
    b'"reference_fp32_bytes":null,"shared":{"surp-":[0,],"tensors":[{"codec":"surp","dtype":"float32","meta":'
    b'{"key":"surp-","norm":0.'
)
DIGEST_BYTES = 32


def deflate_header(text: bytes) -> bytes:
    """The header text compressed as format :data:`FORMAT_VERSION` writes it."""
    compressor = zlib.compressobj(9, zdict=HEADER_ZDICT_V2)
    return compressor.compress(text) + compressor.flush()


def inflate_header(data: bytes | memoryview, version: int) -> bytes:
    """The header text of a format-``version`` file (format 1: plain zlib; 2: with the preset dictionary)."""
    decompressor = zlib.decompressobj(zdict=HEADER_ZDICT_V2) if version >= 2 else zlib.decompressobj()
    return decompressor.decompress(data) + decompressor.flush()


def frame(header: dict[str, Any], blobs: Sequence[bytes]) -> bytes:
    """The whole file: prefix, the header (sorted compact JSON, deflated), the payloads, the SHA-256 of all that."""
    header_bytes = deflate_header(json.dumps(header, separators=(",", ":"), sort_keys=True).encode())
    body = PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_bytes)) + header_bytes + b"".join(blobs)
    return body + hashlib.sha256(body).digest()


def unframe(data: bytes, path: Path) -> tuple[int, Any, memoryview]:
    """(format version, the header's JSON value, the payload section) of a file's bytes, checksum verified.

    The payload is a view into ``data``: the file's bytes are held once.

    Raises:
        ArtifactError: naming ``path``, for a file too short, of another magic or a newer version, a checksum that
            does not match, or a header that does not inflate or parse.
    """
    if len(data) < PREFIX.size + DIGEST_BYTES:
        raise ArtifactError(f"{path}: too short ({len(data)} bytes) to be a lightning_compress artifact.")
    magic, version, header_len = PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise ArtifactError(f"{path}: not a lightning_compress artifact (bad magic {magic!r}).")
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format version {version} is newer than this library reads ({FORMAT_VERSION}); upgrade it."
        )
    view = memoryview(data)
    body, digest = view[:-DIGEST_BYTES], view[-DIGEST_BYTES:]
    if hashlib.sha256(body).digest() != digest:
        raise ArtifactError(f"{path}: checksum mismatch, the file is truncated or corrupted.")
    start = PREFIX.size
    if header_len > len(body) - start:
        raise ArtifactError(f"{path}: header length {header_len} runs past the end of the file.")
    try:
        header = json.loads(inflate_header(body[start : start + header_len], version))
    except (zlib.error, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ArtifactError(f"{path}: unreadable header ({err}).") from err
    return version, header, body[start + header_len :]


def atomic_write(path: Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
