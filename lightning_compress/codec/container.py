r"""The ``.lcz`` artifact: one self-describing file whose size is the size we report.

Layout (all integers little-endian)::

    magic b"LCZ\\x89" | format version (u16) | header length (u32) | header | payloads | SHA-256 of all preceding bytes

The header is JSON, zlib-compressed with a preset dictionary of its own keys (format 2; format 1, plain zlib, is
still read): the format version, the architecture (zoo name and arguments, when known), user
metadata, and one record per tensor (name, parameter or buffer, shape, dtype, codec, codec side information, payload
offset and length). Writes go to a temporary file in the target directory and are renamed into place, so a crash
never leaves a half-written artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from lightning_compress.codec.base import EncodedTensor, get_codec

__all__ = ["FORMAT_VERSION", "Artifact", "ArtifactError", "CodecSpec", "TensorRecord", "load", "read_artifact", "save"]

MAGIC = b"LCZ\x89"
FORMAT_VERSION = 2
_PREFIX = struct.Struct("<4sHI")
#: zlib preset dictionary of format 2: the strings every header repeats. A header is a few hundred bytes, and
#: without a dictionary deflate cannot refer back to them (tests/test_codec.py checks the saving on LeNet-300-100).
#: Never edit it: a different dictionary is a new format version.
_HEADER_ZDICT_V2 = (
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
_DIGEST_BYTES = 32


def _deflate_header(text: bytes) -> bytes:
    compressor = zlib.compressobj(9, zdict=_HEADER_ZDICT_V2)
    return compressor.compress(text) + compressor.flush()


def _inflate_header(data: bytes, version: int) -> bytes:
    """The header text of a format-``version`` file (format 1: plain zlib; 2: with the preset dictionary)."""
    decompressor = zlib.decompressobj(zdict=_HEADER_ZDICT_V2) if version >= 2 else zlib.decompressobj()
    return decompressor.decompress(data) + decompressor.flush()


#: Attribute on a model root where callbacks record which codec each tensor should be written with.
CODEC_PLAN_ATTR = "_lc_codec_plan"
#: Module attribute set by structural compression: fp32 bytes of the model before it was made smaller.
REFERENCE_ATTR = "_lc_reference_fp32_bytes"
#: Modules a compression method puts into a network (e.g. step activations), by type name, so that ``load`` can put
#: them into a freshly built model before filling it.
_MODULE_TYPES: dict[str, type[nn.Module]] = {}
_M = TypeVar("_M", bound=type[nn.Module])


def register_module_type(name: str) -> Callable[[_M], _M]:
    """Register a module class that artifacts record by ``name`` and :func:`load` rebuilds.

    The class must offer ``lc_module_kwargs() -> dict`` (JSON-able constructor arguments); its tensors are in the
    state dict as usual.
    """

    def decorator(cls: _M) -> _M:
        _MODULE_TYPES[name] = cls
        cls.lc_module_type = name  # type: ignore[attr-defined]
        return cls

    return decorator


def _inserted_modules(module: nn.Module) -> dict[str, dict[str, Any]]:
    return {
        name: {"type": sub.lc_module_type, "kwargs": sub.lc_module_kwargs()}
        for name, sub in module.named_modules()
        if name and getattr(type(sub), "lc_module_type", None) in _MODULE_TYPES
    }


def _insert_modules(module: nn.Module, records: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    for name, record in records.items():
        cls = _MODULE_TYPES.get(record["type"])
        if cls is None:
            raise ArtifactError(f"{path}: module {name!r} has type {record['type']!r}, unknown to this library.")
        if not isinstance(module.get_submodule(name), cls):
            module.set_submodule(name, cls(**record["kwargs"]))


class ArtifactError(ValueError):
    """A file is not a readable lightning_compress artifact (wrong magic, version, checksum or truncated)."""


@dataclass(frozen=True)
class CodecSpec:
    """Which codec writes a tensor, with its options (e.g. ``CodecSpec("dense", {"precision": "float16"})``)."""

    codec: str
    options: Mapping[str, Any] = field(default_factory=dict)


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
    payload: bytes = field(repr=False)

    #: Shared blobs: key -> (offset, nbytes) in the payload section.
    shared: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: Modules a compression method inserted (module name -> registered type and constructor arguments).
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: fp32 bytes of the model before structural compression made it smaller (None if it was not).
    reference_fp32_bytes: int | None = None

    def shared_blob(self, key: str) -> bytes:
        """The bytes of one shared blob."""
        offset, nbytes = self.shared[key]
        return self.payload[offset : offset + nbytes]

    def encoded(self, record: TensorRecord) -> EncodedTensor:
        """The stored form of one tensor, with the shared blobs it refers to."""
        data = self.payload[record.offset : record.offset + record.nbytes]
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
                return get_codec(record.codec).decode(self.encoded(record))
        raise KeyError(f"{self.path}: no tensor named {name!r}")

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All tensors, decoded, in stored order."""
        return {r.name: get_codec(r.codec).decode(self.encoded(r)) for r in self.tensors}


def artifact_module(model: nn.Module) -> nn.Module:
    """The module an artifact stores: a LightningModule may name its backbone via ``lc_artifact_module``."""
    inner = getattr(model, "lc_artifact_module", None)
    return inner if isinstance(inner, nn.Module) else model


def _resolve_spec(spec: CodecSpec | str | Mapping[str, Any]) -> CodecSpec:
    if isinstance(spec, CodecSpec):
        return spec
    if isinstance(spec, str):
        return CodecSpec(spec)
    if isinstance(spec, Mapping) and "codec" in spec:
        return CodecSpec(str(spec["codec"]), dict(spec.get("options", {})))
    raise TypeError(f"`codecs` values must be a codec name, a CodecSpec or a mapping with 'codec'; got {spec!r}.")


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    codecs: Mapping[str, CodecSpec | str] | None = None,
    precision: str = "float32",
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` to one compressed artifact file, atomically.

    Every tensor of ``model.state_dict()`` is written by a named codec: first ``codecs[name]`` if given, then the
    plan a compression callback attached to the model, else ``dense`` at ``precision``.

    Args:
        model: the module to store; a LightningModule exposing ``lc_artifact_module`` is unwrapped to it.
        path: destination file (suffix ``.lcz`` suggested); parent directories are created.
        codecs: per-tensor overrides, tensor name -> codec name or :class:`CodecSpec`.
        precision: ``"float32"`` (exact) or ``"float16"`` for tensors stored with the ``dense`` codec by default.
        metadata: JSON-able values stored in the header (accuracy, recipe name, ...).

    Returns:
        The path written.

    Raises:
        ValueError: for an unknown codec, precision or tensor name in ``codecs``.

    Example:
        >>> import tempfile, torch, lightning_compress as lc
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = lc.save(net, f"{d}/net.lcz")
        ...     fresh = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        ...     back = lc.load(p, model=fresh)
        >>> x = torch.randn(5, 4)
        >>> torch.equal(net(x), back(x))
        True
    """
    if precision not in ("float32", "float16"):
        raise ValueError(f"`precision` must be 'float32' or 'float16', got {precision!r}.")
    module = artifact_module(model)
    state = module.state_dict()
    param_names = {name for name, _ in module.named_parameters()}
    plan: dict[str, CodecSpec] = {k: _resolve_spec(v) for k, v in getattr(module, CODEC_PLAN_ATTR, {}).items()}
    for name, spec in (codecs or {}).items():
        if name not in state:
            raise ValueError(f"`codecs` names tensor {name!r}, which the model does not have.")
        plan[name] = _resolve_spec(spec)

    records: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    shared_blobs: dict[str, bytes] = {}
    offset = 0
    for name, tensor in state.items():
        spec = plan.get(name, CodecSpec("dense", {"precision": precision}))
        encoded = get_codec(spec.codec).encode(tensor, **dict(spec.options))
        for key, blob in encoded.shared.items():
            if shared_blobs.setdefault(key, blob) != blob:
                raise ValueError(f"Codec {encoded.codec!r} produced two different shared blobs under key {key!r}.")
        records.append(
            {
                "name": name,
                "role": "parameter" if name in param_names else "buffer",
                "shape": list(encoded.shape),
                "dtype": encoded.dtype,
                "codec": encoded.codec,
                "meta": {**encoded.meta, **({"shared_keys": sorted(encoded.shared)} if encoded.shared else {})},
                "offset": offset,
                "nbytes": len(encoded.payload),
            }
        )
        blobs.append(encoded.payload)
        offset += len(encoded.payload)
    shared_index: dict[str, list[int]] = {}
    for key, blob in shared_blobs.items():
        shared_index[key] = [offset, len(blob)]
        blobs.append(blob)
        offset += len(blob)

    from lightning_compress import __version__

    header = {
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "architecture": getattr(module, "lc_spec", None),
        "modules": _inserted_modules(module),
        "metadata": dict(metadata or {}),
        "reference_fp32_bytes": getattr(module, REFERENCE_ATTR, None),
        "tensors": records,
        "shared": shared_index,
    }
    header_bytes = _deflate_header(json.dumps(header, separators=(",", ":"), sort_keys=True).encode())
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_bytes)) + header_bytes + b"".join(blobs)
    return _atomic_write(Path(path), body + hashlib.sha256(body).digest())


def _atomic_write(path: Path, data: bytes) -> Path:
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


def read_artifact(path: str | os.PathLike[str]) -> Artifact:
    """Parse and verify an artifact file.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ArtifactError: naming the file, if it is not an artifact, is of a newer format, is truncated or corrupted.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Artifact file {str(path)!r} does not exist.")
    data = path.read_bytes()
    if len(data) < _PREFIX.size + _DIGEST_BYTES:
        raise ArtifactError(f"{path}: too short ({len(data)} bytes) to be a lightning_compress artifact.")
    magic, version, header_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise ArtifactError(f"{path}: not a lightning_compress artifact (bad magic {magic!r}).")
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format version {version} is newer than this library reads ({FORMAT_VERSION}); upgrade it."
        )
    body, digest = data[:-_DIGEST_BYTES], data[-_DIGEST_BYTES:]
    if hashlib.sha256(body).digest() != digest:
        raise ArtifactError(f"{path}: checksum mismatch, the file is truncated or corrupted.")
    start = _PREFIX.size
    try:
        header = json.loads(_inflate_header(body[start : start + header_len], version))
    except (zlib.error, json.JSONDecodeError) as err:
        raise ArtifactError(f"{path}: unreadable header ({err}).") from err
    payload = body[start + header_len :]
    tensors = [
        TensorRecord(
            name=t["name"],
            role=t["role"],
            shape=tuple(t["shape"]),
            dtype=t["dtype"],
            codec=t["codec"],
            meta=t["meta"],
            offset=t["offset"],
            nbytes=t["nbytes"],
        )
        for t in header["tensors"]
    ]
    shared = {str(k): (int(v[0]), int(v[1])) for k, v in header.get("shared", {}).items()}
    extents = [r.offset + r.nbytes for r in tensors] + [o + n for o, n in shared.values()]
    if max(extents, default=0) != len(payload):
        raise ArtifactError(f"{path}: payload length does not match its index.")
    return Artifact(
        path=path,
        format_version=version,
        architecture=header.get("architecture"),
        modules=header.get("modules", {}),
        reference_fp32_bytes=header.get("reference_fp32_bytes"),
        metadata=header.get("metadata", {}),
        tensors=tensors,
        file_bytes=len(data),
        payload=payload,
        shared=shared,
    )


def load(path: str | os.PathLike[str], model: nn.Module | None = None, *, strict: bool = True) -> nn.Module:
    """Rebuild the module stored in an artifact.

    Zoo models are rebuilt from their recorded name and arguments. Any other module needs ``model``, a fresh
    instance of its class; parameters whose stored shape differs (structurally compressed layers) are resized
    before loading, so the returned module's forward equals the saved one's.

    Args:
        path: the artifact written by :func:`save`.
        model: a fresh instance to fill, required when the artifact has no zoo architecture.
        strict: passed to ``load_state_dict``.

    Returns:
        The module in eval mode, on CPU.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ArtifactError: if the file is not a valid artifact.
        ValueError: if the architecture is unknown and no ``model`` was given.
    """
    artifact = read_artifact(path)
    if model is None:
        arch = artifact.architecture
        if not arch:
            raise ValueError(
                f"{artifact.path}: the artifact was saved from a module outside the model zoo; "
                "pass `model=` a fresh instance of its class to fill."
            )
        from lightning_compress.models import build_model

        model = build_model(arch["name"], **arch.get("kwargs", {}))
    module = artifact_module(model)
    state = artifact.state_dict()
    _insert_modules(module, artifact.modules, artifact.path)
    resize_to_state(module, state)
    module.load_state_dict(state, strict=strict)
    return model.eval()


def resize_to_state(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Give every parameter/buffer of ``module`` the shape it has in ``state`` (for structurally pruned layers)."""
    for name, tensor in state.items():
        owner_name, _, attr = name.rpartition(".")
        try:
            owner = module.get_submodule(owner_name) if owner_name else module
        except AttributeError:
            continue  # load_state_dict reports unexpected keys
        current = owner._parameters.get(attr, owner._buffers.get(attr))
        if current is None or current.shape == tensor.shape:
            continue
        if attr in owner._parameters:
            owner._parameters[attr] = nn.Parameter(torch.empty_like(tensor), requires_grad=current.requires_grad)
        else:
            owner._buffers[attr] = torch.empty_like(tensor)
        _sync_shape_attributes(owner)


def _sync_shape_attributes(layer: nn.Module) -> None:
    weight = getattr(layer, "weight", None)
    if isinstance(layer, nn.Linear) and weight is not None:
        layer.out_features, layer.in_features = weight.shape
    elif isinstance(layer, nn.modules.conv._ConvNd) and weight is not None:
        layer.out_channels = weight.shape[0]
        layer.in_channels = weight.shape[1] * layer.groups
    elif isinstance(layer, nn.modules.batchnorm._NormBase):
        ref = weight if weight is not None else layer.running_mean
        if ref is not None:
            layer.num_features = ref.shape[0]
