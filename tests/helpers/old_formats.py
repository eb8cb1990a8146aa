"""Files of the formats the library no longer writes (1 and 2: a JSON header), built from a logical header.

The readers must keep reading them; the header-field fuzz cases use format 2 too, because format 3's bytes cannot
even express most of a hostile JSON header (a string where a count goes, a list where an object goes).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

from lightning_compress.codec import frame


def logical(data: bytes) -> tuple[int, dict[str, Any], bytes]:
    """(version, logical header, payload) of any readable file's bytes (what the library reads from it)."""
    version, header, payload = frame.unframe(data, Path("<bytes>"))
    return version, header, bytes(payload)


def json_file(header: Any, payload: bytes, version: int = 2, prefix_version: int | None = None) -> bytes:
    """A format-1 or -2 file: u16 version, u32 header length, the JSON header (zlib; 2 with the preset dictionary),
    the payload and its SHA-256."""
    if isinstance(header, dict):
        header = {**header, "format_version": version}
    text = json.dumps(header).encode()
    deflated = frame.deflate_header(text) if version >= 2 else zlib.compress(text, 9)
    prefix = frame.PREFIX.pack(frame.MAGIC, version if prefix_version is None else prefix_version, len(deflated))
    body = prefix + deflated + payload
    return body + hashlib.sha256(body).digest()
