r"""The ``.lcz`` frame: magic, version, header, payloads and checksum, and the atomic write.

Format 3 (written)::

    magic b"LCZ\\x89" | format version (u8: 3) | header (format 3's bytes) | payloads | CRC-32 of all preceding bytes

The header is :mod:`~lightning_compress.codec.compact`'s: a zoo model's file names its architecture instead of its
tensors, and the container is a few dozen bytes. Formats 1 and 2 (read) had a u16 version, a u32 header length, the
header as JSON (zlib; format 2 with a preset dictionary of its keys) and a SHA-256. What the header says is checked in
:mod:`~lightning_compress.codec.header`.
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

from lightning_compress.codec.compact import decode_header, encode_header
from lightning_compress.codec.records import ArtifactError
from lightning_compress.codec.template import TemplateTooLarge

__all__ = [
    "CHECKSUM",
    "DIGEST_BYTES",
    "FORMAT_VERSION",
    "MAGIC",
    "PREFIX",
    "atomic_write",
    "file_version",
    "frame",
    "unframe",
]

MAGIC = b"LCZ\x89"
FORMAT_VERSION = 3
#: Format 3's checksum: CRC-32 (zlib's) of every byte before it. It catches every burst of up to 32 bits and all but
#: 2**-32 of other damage (tests/test_artifact_fuzz.py flips every bit of a LeNet file); like the SHA-256 of formats
#: 1-2, it guards against damage, not against someone who rewrites the file (the header checks do that).
CHECKSUM = struct.Struct("<I")
#: Formats 1-2: magic, u16 version, u32 header length; their checksum is a SHA-256 of DIGEST_BYTES.
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
    """The header text compressed as format 2 wrote it."""
    compressor = zlib.compressobj(9, zdict=HEADER_ZDICT_V2)
    return compressor.compress(text) + compressor.flush()


def inflate_header(data: bytes | memoryview, version: int) -> bytes:
    """The header text of a format-``version`` file (format 1: plain zlib; 2: with the preset dictionary)."""
    decompressor = zlib.decompressobj(zdict=HEADER_ZDICT_V2) if version >= 2 else zlib.decompressobj()
    return decompressor.decompress(data) + decompressor.flush()


def frame(header: dict[str, Any], blobs: Sequence[bytes]) -> bytes:
    """The whole file: magic, version, the header in format 3's bytes, the payloads, the CRC-32 of all that."""
    body = MAGIC + bytes([FORMAT_VERSION]) + encode_header(header) + b"".join(blobs)
    return body + CHECKSUM.pack(zlib.crc32(body))


def file_version(data: bytes | memoryview) -> int:
    """The format version a file's prefix gives (formats 1-2: a u16; format 3 on: a u8), without checking more."""
    if len(data) < 6:
        return -1
    low, high = data[4], data[5]
    return low if low >= 3 or high == 0 else low + 256 * high


def unframe(data: bytes, path: Path, max_elements: int = 2**62) -> tuple[int, Any, memoryview]:
    """(format version, the logical header, the payload section) of a file's bytes, checksum verified.

    The payload is a view into ``data``: the file's bytes are held once.

    Raises:
        ArtifactError: naming ``path``, for a file too short, of another magic or a newer version, a checksum that
            does not match, or a header that does not read; for format 3, also an architecture not registered here
            or one that builds more than ``max_elements`` values.
    """
    if len(data) < len(MAGIC) + 1 + CHECKSUM.size:
        raise ArtifactError(f"{path}: too short ({len(data)} bytes) to be a lightning_compress artifact.")
    if data[: len(MAGIC)] != MAGIC:
        raise ArtifactError(f"{path}: not a lightning_compress artifact (bad magic {bytes(data[:4])!r}).")
    version = file_version(data)
    if version > FORMAT_VERSION or version < 1:
        raise ArtifactError(
            f"{path}: format version {version} is "
            + (f"newer than this library reads ({FORMAT_VERSION}); upgrade it." if version > 0 else "not a version.")
        )
    if version < 3:
        return _unframe_json(data, path, version)
    view = memoryview(data)
    body, digest = view[: -CHECKSUM.size], view[-CHECKSUM.size :]
    if CHECKSUM.pack(zlib.crc32(body)) != digest:
        raise ArtifactError(f"{path}: checksum mismatch, the file is truncated or corrupted.")
    try:
        header, end = decode_header(body, len(MAGIC) + 1, len(body), max_elements=max_elements)
    except TemplateTooLarge as err:
        raise ArtifactError(
            f"{path}: header field 'architecture.kwargs' describes a model of {err.elements:,} values, more than "
            f"max_elements={max_elements:,}; pass a larger `max_elements` if the file is genuine."
        ) from err
    except LookupError as err:
        raise ArtifactError(
            f"{path}: header field 'architecture.name': {err.args[0] if err.args else err} The file names its "
            "tensors by the architecture: read it with lightning_compress.read_artifact or import "
            "lightning_compress.models (the model zoo registers itself)."
        ) from err
    except (ValueError, UnicodeDecodeError, RecursionError, TypeError, IndexError) as err:
        raise ArtifactError(f"{path}: unreadable header ({err}).") from err
    return version, header, body[end:]


def _unframe_json(data: bytes, path: Path, version: int) -> tuple[int, Any, memoryview]:
    """Formats 1-2: u16 version, u32 header length, deflated JSON header, payloads, SHA-256."""
    if len(data) < PREFIX.size + DIGEST_BYTES:
        raise ArtifactError(f"{path}: too short ({len(data)} bytes) to be a lightning_compress artifact.")
    _, _, header_len = PREFIX.unpack_from(data)
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
