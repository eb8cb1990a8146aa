"""Codec interface and registry.

A codec turns one tensor into ``(meta, payload)``: ``meta`` is small JSON-able side information (scales, sizes,
which variant was chosen) and ``payload`` is the bytes that carry the values. The container
(:mod:`lightning_compress.codec.writer`) stores both; the size report reads them back from the file.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

#: The library's version, written into every artifact header (here, at the bottom of the package, so the codec layer
#: never imports the package root above it).
LIBRARY_VERSION = "0.1.0"

__all__ = [
    "LIBRARY_VERSION",
    "Codec",
    "CodecSpec",
    "EncodedTensor",
    "available_codecs",
    "get_codec",
    "register_codec",
    "tensor_from_bytes",
    "tensor_to_bytes",
]


@dataclass(frozen=True)
class CodecSpec:
    """Which codec writes a tensor, with its options (e.g. ``CodecSpec("dense", {"precision": "float16"})``).

    Examples:
        >>> import tempfile, torch, lightning_compress as lc
        >>> net = torch.nn.Linear(64, 8)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     half = lc.save(net, f"{d}/half.lcz", codecs={"weight": lc.CodecSpec("dense", {"precision": "float16"})})
        ...     lc.read_artifact(half).tensors[0].nbytes  # 512 weights at 2 bytes each
        1024
    """

    codec: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EncodedTensor:
    """One tensor as a codec wrote it.

    Attributes:
        codec: name of the codec that produced it.
        shape: shape of the decoded tensor.
        dtype: dtype name of the decoded tensor (``"float32"``, ``"int64"``, ...).
        meta: JSON-able side information needed to decode.
        payload: the encoded bytes.
        shared: blobs shared with other tensors, keyed by content; the container stores each key once.
    """

    codec: str
    shape: tuple[int, ...]
    dtype: str
    meta: dict[str, Any] = field(default_factory=dict)
    payload: bytes = b""
    #: Blobs several tensors use (e.g. one codebook for the whole network), by key; stored once per artifact.
    shared: dict[str, bytes] = field(default_factory=dict)


class Codec(ABC):
    """Base class of all codecs; subclasses set :attr:`name` and are registered with :func:`register_codec`."""

    name: ClassVar[str] = ""

    def attribute_shared(self, blob: bytes, tensors: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
        """Bytes of the shared ``blob`` each tensor accounts for (its record's ``meta``, ``"numel"`` added).

        The size report puts them on the tensors' rows and keeps the rest as the blob's own overhead. Default: none
        (a codebook shared by every tensor is overhead of them all).
        """
        return {}

    @abstractmethod
    def encode(self, tensor: torch.Tensor, **options: Any) -> EncodedTensor:
        """Encode ``tensor``; ``options`` are codec specific (e.g. ``precision`` for ``dense``)."""

    @abstractmethod
    def decode(self, encoded: EncodedTensor) -> torch.Tensor:
        """Return the tensor described by ``encoded`` (on CPU)."""

    def forget(self) -> None:  # noqa: B027 - optional hook: most codecs cache nothing
        """Drop what the codec cached while coding one artifact (called when a save or a whole load is done)."""


_REGISTRY: dict[str, Codec] = {}


def register_codec(codec_cls: type[Codec]) -> type[Codec]:
    """Class decorator that registers a codec under its ``name``.

    Raises:
        ValueError: if the name is empty or already taken by another class.
    """
    name = codec_cls.name
    if not name:
        raise ValueError(f"Codec class {codec_cls.__name__} must set a non-empty `name`.")
    existing = _REGISTRY.get(name)
    if existing is not None and type(existing) is not codec_cls:
        raise ValueError(f"Codec name {name!r} is already registered by {type(existing).__name__}.")
    _REGISTRY[name] = codec_cls()
    return codec_cls


def get_codec(name: str) -> Codec:
    """Return the registered codec called ``name``.

    Raises:
        ValueError: naming the unknown codec and listing the registered ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"Unknown codec {name!r}; registered codecs: {sorted(_REGISTRY)}.") from None


def forget_caches() -> None:
    """Every registered codec drops its caches (a decoded shared stream can be as large as the model)."""
    for codec in _REGISTRY.values():
        codec.forget()


def available_codecs() -> list[str]:
    """Names of all registered codecs, sorted."""
    return sorted(_REGISTRY)


_DTYPES: Mapping[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float64,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    )
}


def stored_dtype_names() -> list[str]:
    """Names of the dtypes an artifact stores, sorted."""
    return sorted(_DTYPES)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    """Inverse of :func:`dtype_name`.

    Raises:
        ValueError: for a dtype the container does not store.
    """
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"Unsupported dtype {name!r}; supported: {sorted(_DTYPES)}.") from None


def tensor_to_bytes(tensor: torch.Tensor) -> bytes:
    """Raw little-endian bytes of a tensor in its own dtype (row-major)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def fp32_nbytes(numel: int, dtype: torch.dtype) -> int:
    """Bytes of ``numel`` elements stored "as fp32": 4 per floating-point element, the native size otherwise.

    The reference every compression ratio is taken against.

    Examples:
        >>> fp32_nbytes(10, torch.float16), fp32_nbytes(10, torch.int64)
        (40, 80)
    """
    return numel * (4 if dtype.is_floating_point else torch.empty((), dtype=dtype).element_size())


def tensor_from_bytes(payload: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`tensor_to_bytes`.

    Raises:
        ValueError: when the number of bytes does not match ``dtype`` and ``shape``.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    numel = 1
    for s in shape:
        numel *= s
    if len(payload) != numel * itemsize:
        raise ValueError(f"Payload has {len(payload)} bytes, expected {numel * itemsize} for {dtype} {shape}.")
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    raw = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    return raw.view(dtype).reshape(shape).clone()
