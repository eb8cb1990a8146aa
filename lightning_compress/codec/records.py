"""What an artifact holds once read: its tensor records, why each got its codec, and the errors of a bad file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lightning_compress.codec.base import EncodedTensor, dtype_from_name, forget_caches, get_codec

__all__ = ["SOURCES", "Artifact", "ArtifactError", "TensorRecord"]

#: Why a tensor got its codec (``TensorRecord.source``; the size report shows it).
SOURCE_REPRESENTATION = "representation"  # what the compression methods decided (on this module or one holding it)
SOURCE_VALUES = "values"  # nothing decided it: the smallest exact codec its values allow
SOURCE_STALE = "stale"  # the values changed after the decision (e.g. fine-tuned): chosen from the values instead
SOURCE_ASKED = "asked"  # ``codecs=`` of ``save``
SOURCE_DEFAULT = "default"  # nothing decided it and nothing beats dense
SOURCES = (SOURCE_REPRESENTATION, SOURCE_VALUES, SOURCE_STALE, SOURCE_ASKED, SOURCE_DEFAULT)


class ArtifactError(ValueError):
    """A file is not a readable lightning_compress artifact (wrong magic, version, checksum or truncated).

    Examples:
        >>> import tempfile, lightning_compress as lc
        >>> with tempfile.NamedTemporaryFile(suffix=".lcz") as f:
        ...     _ = f.write(b"not an artifact, but long enough to be read as one: " * 4)
        ...     f.flush()
        ...     try:
        ...         lc.read_artifact(f.name)
        ...     except lc.ArtifactError as err:
        ...         print("bad magic" in str(err))
        True
    """


@dataclass(frozen=True)
class TensorRecord:
    """Index entry of one tensor inside an artifact."""

    name: str
    role: str
    shape: tuple[int, ...]
    dtype: str
    codec: str
    meta: dict[str, Any]
    offset: int
    nbytes: int
    #: why the tensor got its codec (one of :data:`SOURCES`; absent from the header for the two common cases)
    source: str = "representation"

    @property
    def numel(self) -> int:
        """Number of elements of the decoded tensor."""
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass
class Artifact:
    """A parsed artifact: header, tensor index and the raw payload section (checksum already verified)."""

    path: Path
    format_version: int
    architecture: dict[str, Any] | None
    metadata: dict[str, Any]
    tensors: list[TensorRecord]
    file_bytes: int
    #: the payload section, a view into the file's bytes (read once)
    payload: bytes | memoryview = field(repr=False)

    #: Shared blobs: key -> (offset, nbytes) in the payload section.
    shared: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: Modules a compression method inserted (module name -> registered type and constructor arguments).
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: fp32 bytes of the model before structural compression made it smaller (None if it was not).
    reference_fp32_bytes: int | None = None
    #: tied tensors: alias name -> the stored name whose tensor it shares
    aliases: dict[str, str] = field(default_factory=dict)

    def shared_blob(self, key: str) -> bytes:
        """The bytes of one shared blob."""
        offset, nbytes = self.shared[key]
        return bytes(self.payload[offset : offset + nbytes])

    def encoded(self, record: TensorRecord) -> EncodedTensor:
        """The stored form of one tensor, with the shared blobs it refers to."""
        data = bytes(self.payload[record.offset : record.offset + record.nbytes])
        keys = record.meta.get("shared_keys", [])
        missing = [k for k in keys if k not in self.shared]
        if missing:
            raise ArtifactError(f"{self.path}: tensor {record.name!r} refers to missing shared blobs {missing}.")
        return EncodedTensor(
            record.codec, record.shape, record.dtype, dict(record.meta), data, {k: self.shared_blob(k) for k in keys}
        )

    def decode(self, name: str) -> torch.Tensor:
        """Decode the tensor called ``name``.

        Raises:
            KeyError: if the artifact has no such tensor.
        """
        for record in self.tensors:
            if record.name == name:
                return self._decode(record)
        raise KeyError(f"{self.path}: no tensor named {name!r}")

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All tensors, decoded, in stored order.

        Raises:
            ArtifactError: naming the file and the tensor whose payload or side information does not decode.
        """
        try:
            state = {r.name: self._decode(r) for r in self.tensors}
        finally:
            forget_caches()
        for alias, name in self.aliases.items():
            state[alias] = state[name]
        return state

    def _decode(self, record: TensorRecord) -> torch.Tensor:
        # The header passed its checks, but a codec's side information and payload can still disagree (a hostile
        # or damaged file with a recomputed checksum): every failure becomes an ArtifactError naming the tensor.
        try:
            tensor = get_codec(record.codec).decode(self.encoded(record))
        except ArtifactError:
            raise
        except Exception as err:
            raise ArtifactError(
                f"{self.path}: tensor {record.name!r} ({record.codec}) does not decode: {type(err).__name__}: {err}"
            ) from err
        if tuple(tensor.shape) != record.shape or tensor.dtype != dtype_from_name(record.dtype):
            raise ArtifactError(
                f"{self.path}: tensor {record.name!r} decodes to {tuple(tensor.shape)} {tensor.dtype}, but its "
                f"record says {record.shape} {record.dtype}."
            )
        return tensor
