"""Reading an artifact: the file's bytes read once, the frame verified, the header checked; nothing decoded yet."""

from __future__ import annotations

import os
from pathlib import Path

from lightning_compress.codec.frame import unframe
from lightning_compress.codec.header import checked_max_elements, parse_header
from lightning_compress.codec.records import Artifact

__all__ = ["read_artifact"]


def read_artifact(path: str | os.PathLike[str], *, max_elements: int | None = None) -> Artifact:
    """Parse and verify an artifact file: checksum, then every header field's type and range.

    Nothing is decoded here; the tensors' extents must tile the payload exactly, and their shapes may not add up to
    more than ``max_elements`` values, so a hostile header cannot make a reader allocate more than that.

    Args:
        path: the artifact.
        max_elements: the most values the tensors may decode to; ``None`` (default): what this machine's memory
            holds (:func:`~lightning_compress.codec.header.default_max_elements`).

    Examples:
        >>> import tempfile, torch, lightning_compress as lc
        >>> with tempfile.TemporaryDirectory() as d:
        ...     artifact = lc.read_artifact(lc.save(torch.nn.Linear(3, 2), f"{d}/net.lcz"))
        >>> [(t.name, t.codec, t.shape) for t in artifact.tensors]
        [('weight', 'dense', (2, 3)), ('bias', 'dense', (2,))]

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ArtifactError: naming the file (and the header field), if it is not an artifact, is of a newer format, is
            truncated, corrupted or malformed.
        ValueError: for a ``max_elements`` that is not an int >= 1.
    """
    max_elements = checked_max_elements(max_elements)
    if not isinstance(path, str | os.PathLike):
        raise ValueError(f"`path` must be a file path (str or os.PathLike), got {path!r}.")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Artifact file {str(path)!r} does not exist.")
    data = path.read_bytes()
    version, header, payload = unframe(data, path, max_elements)
    return parse_header(header, path, version, payload, len(data), max_elements)
