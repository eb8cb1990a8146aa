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
import math
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

from lightning_compress.arguments import check_bool, check_choice, check_metadata
from lightning_compress.codec.base import (
    LIBRARY_VERSION,
    CodecSpec,
    EncodedTensor,
    available_codecs,
    dtype_from_name,
    dtype_name,
    forget_caches,
    get_codec,
    stored_dtype_names,
)
from lightning_compress.codec.choice import smallest_exact
from lightning_compress.codec.representation import find_representation

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

    Example:
        >>> default_max_elements() >= 2**20
        True
    """
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return MAX_ELEMENTS
    return max(2**20, physical // _BYTES_PER_DECODED_VALUE) if physical > 0 else MAX_ELEMENTS


#: Modules a method inserts (step activations) hold a handful of values each.
_MAX_INSERTED_ELEMENTS = 2**20


def _deflate_header(text: bytes) -> bytes:
    compressor = zlib.compressobj(9, zdict=_HEADER_ZDICT_V2)
    return compressor.compress(text) + compressor.flush()


def _inflate_header(data: bytes, version: int) -> bytes:
    """The header text of a format-``version`` file (format 1: plain zlib; 2: with the preset dictionary)."""
    decompressor = zlib.decompressobj(zdict=_HEADER_ZDICT_V2) if version >= 2 else zlib.decompressobj()
    return decompressor.decompress(data) + decompressor.flush()


#: Module attribute set by structural compression: fp32 bytes of the model before it was made smaller.
REFERENCE_ATTR = "_lc_reference_fp32_bytes"
#: Modules a compression method puts into a network (e.g. step activations), by type name, so that ``load`` can put
#: them into a freshly built model before filling it.
_MODULE_TYPES: dict[str, type[nn.Module]] = {}
_M = TypeVar("_M", bound=type[nn.Module])


#: Architectures ``load`` rebuilds by name. The model zoo registers its builders here, so the registry points down
#: and this module never imports the zoo.
_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}


def register_architecture(name: str, builder: Callable[..., nn.Module]) -> None:
    """Let :func:`load` rebuild artifacts whose header names architecture ``name`` (the model zoo calls this)."""
    _ARCHITECTURES[name] = builder


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
        try:
            if not isinstance(module.get_submodule(name), cls):
                with torch.device("meta"):  # its size first: constructor arguments come from the header
                    size = sum(t.numel() for t in cls(**record["kwargs"]).state_dict().values())
                if size > _MAX_INSERTED_ELEMENTS:
                    raise ValueError(f"it would hold {size:,} values")
                module.set_submodule(name, cls(**record["kwargs"]))
        except Exception as err:
            raise ArtifactError(
                f"{path}: header field 'modules.{name}' does not fit the model: {type(err).__name__}: {err}"
            ) from err


class ArtifactError(ValueError):
    """A file is not a readable lightning_compress artifact (wrong magic, version, checksum or truncated).

    Example:
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
    payload: bytes = field(repr=False)

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
    codecs_decided: bool = False,
) -> Path:
    """Write ``model`` to one compressed artifact file, atomically.

    Every tensor of ``model.state_dict()`` is written by a named codec: first ``codecs[name]`` if given, then the
    codec its representation calls for (what the compression callbacks decided, see
    :mod:`lightning_compress.codec.representation`), else ``dense`` at ``precision``.

    Args:
        model: the module to store; a LightningModule exposing ``lc_artifact_module`` is unwrapped to it.
        path: destination file (suffix ``.lcz`` suggested); parent directories are created.
        codecs: per-tensor overrides, tensor name -> codec name or :class:`CodecSpec`.
        precision: ``"float32"`` (exact) or ``"float16"`` for tensors stored with the ``dense`` codec by default.
        metadata: JSON-able values stored in the header (accuracy, recipe name, ...).
        codecs_decided: the ``codecs`` are a compression method's decisions not yet in its representation (a
            callback measuring the file it is about to write): recorded as such, so the trial's header is the
            final file's, byte for byte.

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
    check_choice("precision", precision, ("float32", "float16"))
    if not isinstance(model, nn.Module):
        raise ValueError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    if not isinstance(path, str | os.PathLike):
        raise ValueError(f"`path` must be a file path (str or os.PathLike), got {path!r}.")
    if codecs is not None and not isinstance(codecs, Mapping):
        raise ValueError(f"`codecs` must be None or a mapping tensor name -> codec, got {type(codecs).__name__}.")
    check_metadata("metadata", metadata)
    check_bool("codecs_decided", codecs_decided)
    module = artifact_module(model)
    state = module.state_dict()
    for name, tensor in state.items():  # nothing is written for a diverged model
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"tensor {name!r} holds NaN or Inf values; nothing was written to {str(path)!r}.")
    param_names = {name for name, _ in module.named_parameters(remove_duplicate=False)}
    aliases = tied_aliases(state)
    # each tensor's codec follows from its representation (what the compression methods decided, found also on a
    # module holding this one), then overrides; tensors nothing decided get the smallest exact codec their values allow
    found = find_representation(module)
    plan: dict[str, CodecSpec] = found.codec_plan()
    asked: dict[str, CodecSpec] = {}
    for name, spec in (codecs or {}).items():
        if name not in state:
            raise ValueError(f"`codecs` names tensor {name!r}, which the model does not have.")
        if name in aliases:
            raise ValueError(f"`codecs` names tensor {name!r}, an alias of {aliases[name]!r}: name that one.")
        asked[name] = _resolve_spec(spec)

    records: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    shared_blobs: dict[str, bytes] = {}
    offset = 0
    try:  # a codec may cache a decoded shared stream (as large as the model) while checking its encodings
        for name, tensor in state.items():
            if name in aliases:
                continue  # one tensor under two names: written once, the alias restored on load
            encoded, source = _encode(name, tensor, asked.get(name), plan.get(name), precision)
            if codecs_decided and source == SOURCE_ASKED:
                source = SOURCE_REPRESENTATION
            for key, blob in encoded.shared.items():
                if shared_blobs.setdefault(key, blob) != blob:
                    raise ValueError(f"Codec {encoded.codec!r} produced two different shared blobs under key {key!r}.")
            record = {
                "name": name,
                "role": "parameter" if name in param_names else "buffer",
                "shape": list(encoded.shape),
                "dtype": encoded.dtype,
                "codec": encoded.codec,
                "meta": {**encoded.meta, **({"shared_keys": sorted(encoded.shared)} if encoded.shared else {})},
                "offset": offset,
                "nbytes": len(encoded.payload),
            }
            if source not in (SOURCE_REPRESENTATION, SOURCE_DEFAULT):
                record["source"] = source  # the common cases cost no header bytes
            records.append(record)
            blobs.append(encoded.payload)
            offset += len(encoded.payload)
    finally:
        forget_caches()
    shared_index: dict[str, list[int]] = {}
    for key, blob in shared_blobs.items():
        shared_index[key] = [offset, len(blob)]
        blobs.append(blob)
        offset += len(blob)

    header = {
        "format_version": FORMAT_VERSION,
        "library_version": LIBRARY_VERSION,
        "architecture": getattr(module, "lc_spec", None),
        "modules": _inserted_modules(module),
        "metadata": dict(metadata or {}),
        "reference_fp32_bytes": _reference_bytes(module, state, aliases, found.original_shapes),
        "tensors": records,
        "shared": shared_index,
        **({"aliases": aliases} if aliases else {}),
    }
    header_bytes = _deflate_header(json.dumps(header, separators=(",", ":"), sort_keys=True).encode())
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_bytes)) + header_bytes + b"".join(blobs)
    return _atomic_write(Path(path), body + hashlib.sha256(body).digest())


def _reference_bytes(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    aliases: Mapping[str, str],
    original_shapes: Mapping[str, tuple[int, ...]],
) -> int | None:
    """fp32 bytes of the model before structural compression (``None``: it was not made smaller)."""
    if not original_shapes:
        return getattr(module, REFERENCE_ATTR, None)
    total = 0
    for name, tensor in state.items():
        if name not in aliases:
            numel = math.prod(original_shapes.get(name, tuple(tensor.shape)))
            total += numel * (4 if tensor.is_floating_point() else tensor.element_size())
    return total


#: Why a tensor got its codec (``TensorRecord.source``; the size report shows it).
SOURCE_REPRESENTATION = "representation"  # what the compression methods decided (on this module or one holding it)
SOURCE_VALUES = "values"  # nothing decided it: the smallest exact codec its values allow
SOURCE_STALE = "stale"  # the values changed after the decision (e.g. fine-tuned): chosen from the values instead
SOURCE_ASKED = "asked"  # ``codecs=`` of ``save``
SOURCE_DEFAULT = "default"  # nothing decided it and nothing beats dense
SOURCES = (SOURCE_REPRESENTATION, SOURCE_VALUES, SOURCE_STALE, SOURCE_ASKED, SOURCE_DEFAULT)


def _encode(
    name: str, tensor: torch.Tensor, asked: CodecSpec | None, decided: CodecSpec | None, precision: str
) -> tuple[EncodedTensor, str]:
    """One tensor's encoding and why it got that codec (one of :data:`SOURCES`)."""
    if asked is not None:  # the user's choice: its failure is theirs to see
        return get_codec(asked.codec).encode(tensor, **dict(asked.options)), SOURCE_ASKED
    stale = False
    if decided is not None:
        try:
            return get_codec(decided.codec).encode(tensor, **dict(decided.options)), SOURCE_REPRESENTATION
        except (ValueError, TypeError, KeyError):
            stale = True  # the tensor no longer holds what was decided: its values say what it is now
    dense = get_codec("dense").encode(tensor, precision=precision)
    best, chosen = smallest_exact(tensor, dense)
    if stale:
        return best, SOURCE_STALE
    return best, SOURCE_VALUES if chosen else SOURCE_DEFAULT


def tied_aliases(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Names that hold the same tensor as an earlier name (tied weights): alias -> the first name.

    Example:
        >>> emb = torch.nn.Embedding(5, 3)
        >>> lm = torch.nn.ModuleDict({"emb": emb, "out": torch.nn.Linear(3, 5, bias=False)})
        >>> lm["out"].weight = emb.weight
        >>> tied_aliases(lm.state_dict())
        {'out.weight': 'emb.weight'}
    """
    first: dict[tuple[int, torch.dtype, tuple[int, ...], tuple[int, ...], str], str] = {}
    aliases: dict[str, str] = {}
    for name, tensor in state.items():
        if tensor.numel() == 0:
            continue
        key = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tuple(tensor.stride()), str(tensor.device))
        if key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
    return aliases


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


def read_artifact(path: str | os.PathLike[str], *, max_elements: int | None = None) -> Artifact:
    """Parse and verify an artifact file: checksum, then every header field's type and range.

    Nothing is decoded here; the tensors' extents must tile the payload exactly, and their shapes may not add up to
    more than ``max_elements`` values, so a hostile header cannot make a reader allocate more than that.

    Args:
        path: the artifact.
        max_elements: the most values the tensors may decode to; ``None`` (default): what this machine's memory
            holds (:func:`default_max_elements`).

    Example:
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
    max_elements = _checked_max_elements(max_elements)
    if not isinstance(path, str | os.PathLike):
        raise ValueError(f"`path` must be a file path (str or os.PathLike), got {path!r}.")
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
    if header_len > len(body) - start:
        raise ArtifactError(f"{path}: header length {header_len} runs past the end of the file.")
    try:
        header = json.loads(_inflate_header(body[start : start + header_len], version))
    except (zlib.error, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ArtifactError(f"{path}: unreadable header ({err}).") from err
    payload = body[start + header_len :]
    return _parse_header(header, path, version, payload, len(data), max_elements)


def _checked_max_elements(max_elements: Any) -> int:
    if max_elements is None:
        return default_max_elements()
    if not _is_count(max_elements) or max_elements < 1:
        raise ValueError(f"`max_elements` must be None (this machine's memory) or an int >= 1, got {max_elements!r}.")
    return int(max_elements)


def _parse_header(
    header: Any, path: Path, version: int, payload: bytes, file_bytes: int, max_elements: int
) -> Artifact:
    """Check every header field's type and range before anything is built from it (see ``read_artifact``)."""

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
        if record.get("type") not in _MODULE_TYPES:
            raise fail(f"modules.{name}.type", f"is {record.get('type')!r}; known types: {sorted(_MODULE_TYPES)}.")
    metadata = header.get("metadata", {})
    if not isinstance(metadata, dict):
        raise fail("metadata", "must be an object.")
    reference = header.get("reference_fp32_bytes")
    if reference is not None and not _is_count(reference):
        raise fail("reference_fp32_bytes", f"must be null or an int >= 0, got {reference!r}.")
    shared_field = header.get("shared", {})
    if not isinstance(shared_field, dict):
        raise fail("shared", "must be an object (key -> [offset, nbytes]).")
    shared: dict[str, tuple[int, int]] = {}
    for key, extent in shared_field.items():
        if not (isinstance(extent, list) and len(extent) == 2 and all(_is_count(v) for v in extent)):
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
        if not (isinstance(shape, list) and len(shape) <= _MAX_DIMS and all(_is_count(s) for s in shape)):
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
        if not (_is_count(t.get("offset")) and _is_count(t.get("nbytes"))):
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


def _is_count(value: Any) -> bool:
    """An int >= 0 (JSON booleans are not counts)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def load(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    *,
    strict: bool = True,
    max_elements: int | None = None,
) -> nn.Module:
    """Rebuild the module stored in an artifact.

    Zoo models are rebuilt from their recorded name and arguments. Any other module needs ``model``, a fresh
    instance of its class; parameters whose stored shape differs (structurally compressed layers) are resized
    before loading, so the returned module's forward equals the saved one's.

    Before any tensor is decoded, the header is checked against the model it describes: the architecture is built
    on the ``meta`` device (no memory), inserted modules must be registered types, and every tensor record must name
    a tensor of that model, with its dtype, its number of dimensions and no dimension larger than the model's (a
    structurally compressed layer may be smaller). A zoo model must still run on its input shape with the stored
    shapes (checked on ``meta``) and keep its output shape. Path arguments recorded in the architecture
    (``weights_path``, ...) are ignored: the artifact's own tensors replace those weights, and a file never makes
    the reader open another file.

    Args:
        path: the artifact written by :func:`save`.
        model: a fresh instance to fill, required when the artifact has no zoo architecture.
        strict: passed to ``load_state_dict``.
        max_elements: the most values the artifact may decode to (see :func:`read_artifact`).

    Returns:
        The module in eval mode, on CPU.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ArtifactError: if the file is not a valid artifact, or does not fit the model it describes (or ``model``).
        ValueError: if the architecture is unknown and no ``model`` was given.

    Example:
        >>> import tempfile, torch, lightning_compress as lc
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     back = lc.load(lc.save(net, f"{d}/net.lcz"), model=torch.nn.Sequential(
        ...         torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)))
        >>> x = torch.randn(2, 4)
        >>> torch.equal(back(x), net(x)), back.training
        (True, False)
    """
    if model is not None and not isinstance(model, nn.Module):
        raise ValueError(f"`model` must be None or a fresh torch.nn.Module to fill, got {type(model).__name__}.")
    check_bool("strict", strict)
    max_elements = _checked_max_elements(max_elements)
    artifact = read_artifact(path, max_elements=max_elements)
    if model is None:
        if not artifact.architecture:
            raise ValueError(
                f"{artifact.path}: the artifact was saved from a module outside the model zoo; "
                "pass `model=` a fresh instance of its class to fill."
            )
        _check_zoo_structure(artifact, max_elements)
        model = _build_zoo_model(artifact, torch.device("cpu"))
    module = artifact_module(model)
    _insert_modules(module, artifact.modules, artifact.path)
    _check_records(module, artifact, strict)
    _load_tensor_by_tensor(module, artifact)
    return model.eval()


def _load_tensor_by_tensor(module: nn.Module, artifact: Artifact) -> None:
    """Decode each tensor into the module and drop it: the model is never held twice (whole decoded state + model).

    The shapes come from the header (structurally compressed layers are resized first, no decoding needed); the
    names were checked against the module by :func:`_check_records`.
    """
    shapes = {r.name: torch.empty(r.shape, dtype=dtype_from_name(r.dtype), device="meta") for r in artifact.tensors}
    resize_to_state(module, shapes | {alias: shapes[name] for alias, name in artifact.aliases.items()})
    aliases: dict[str, list[str]] = {}
    for alias, name in artifact.aliases.items():
        aliases.setdefault(name, []).append(alias)
    try:
        for record in artifact.tensors:
            tensor = artifact._decode(record)
            try:
                names = (record.name, *aliases.get(record.name, []))
                module.load_state_dict(dict.fromkeys(names, tensor), strict=False)
            except RuntimeError as err:
                raise ArtifactError(f"{artifact.path}: the tensors do not fit the model: {err}") from err
            del tensor
    finally:
        forget_caches()


def _build_zoo_model(artifact: Artifact, device: torch.device) -> nn.Module:
    """The recorded zoo architecture, built on ``device`` (``meta`` for checks); path arguments dropped."""
    arch = artifact.architecture or {}
    name = arch.get("name")
    builder = _ARCHITECTURES.get(name) if isinstance(name, str) else None
    if builder is None:
        raise ArtifactError(
            f"{artifact.path}: header field 'architecture.name' is {name!r}; "
            f"the model zoo has {sorted(_ARCHITECTURES)}"
            + (
                ""
                if _ARCHITECTURES
                else " (nothing registered: use lightning_compress.load, or import lightning_compress.models)"
            )
            + "."
        )
    kwargs = {k: v for k, v in arch.get("kwargs", {}).items() if not str(k).endswith("_path")}
    try:
        with device:
            model = builder(**kwargs)
        object.__setattr__(model, "lc_spec", {"name": name, "kwargs": kwargs})  # a re-save keeps the architecture
        return model
    except Exception as err:
        raise ArtifactError(
            f"{artifact.path}: header field 'architecture.kwargs' does not build {name!r}: {type(err).__name__}: {err}"
        ) from err


def _check_zoo_structure(artifact: Artifact, max_elements: int) -> None:
    """Build the architecture on ``meta``, bound its size, and check that the stored shapes still run."""
    meta = torch.device("meta")
    skeleton = _build_zoo_model(artifact, meta)
    dense_elements = sum(t.numel() for t in skeleton.state_dict().values())
    if dense_elements > max_elements:
        raise ArtifactError(
            f"{artifact.path}: header field 'architecture.kwargs' describes a model of {dense_elements:,} values, more "
            f"than max_elements={max_elements:,}; pass a larger `max_elements` if the file is genuine."
        )
    in_shape = _input_shape(skeleton, artifact)
    reference = _meta_forward(skeleton, in_shape, artifact) if in_shape is not None else None
    with meta:
        _insert_modules(skeleton, artifact.modules, artifact.path)
    _check_records(skeleton, artifact, strict=True)
    dense_shapes = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    smaller = [r.name for r in artifact.tensors if r.shape != dense_shapes.get(r.name, r.shape)]
    if smaller and artifact.reference_fp32_bytes is None:
        raise ArtifactError(
            f"{artifact.path}: tensors {smaller[:3]} are smaller than the architecture's, but header field "
            "'reference_fp32_bytes' (set by structural compression) is null."
        )
    resize_to_state(
        skeleton, {r.name: torch.empty(r.shape, dtype=dtype_from_name(r.dtype), device=meta) for r in artifact.tensors}
    )
    if in_shape is not None:
        output = _meta_forward(skeleton, in_shape, artifact)
        if reference is not None and output.shape != reference.shape:
            raise ArtifactError(
                f"{artifact.path}: the stored shapes change the model's output from {tuple(reference.shape)} to "
                f"{tuple(output.shape)}."
            )


def _input_shape(model: nn.Module, artifact: Artifact) -> tuple[int, ...] | None:
    arch = artifact.architecture or {}
    in_shape = arch.get("kwargs", {}).get("in_shape", getattr(model, "lc_in_shape", None))
    if isinstance(in_shape, list | tuple) and all(_is_count(s) for s in in_shape):
        return (1, *in_shape)
    return None


def _meta_forward(model: nn.Module, in_shape: tuple[int, ...], artifact: Artifact) -> torch.Tensor:
    try:
        with torch.no_grad():
            return model.eval()(torch.empty(in_shape, device="meta"))
    except Exception as err:
        raise ArtifactError(
            f"{artifact.path}: the stored tensor shapes do not chain into a working model: {err}"
        ) from err


def _check_records(module: nn.Module, artifact: Artifact, strict: bool) -> None:
    """Every record names a tensor of ``module`` with its dtype and rank, and no dimension larger than its own."""
    expected = module.state_dict(keep_vars=True)
    for record in artifact.tensors:
        where = f"{artifact.path}: tensor {record.name!r}"
        current = expected.get(record.name)
        if current is None:
            if strict:
                raise ArtifactError(f"{where} is not a tensor of the model ({type(module).__name__}).")
            continue
        if record.dtype != dtype_name(current.dtype):
            raise ArtifactError(f"{where}: header field 'dtype' is {record.dtype!r}, the model's is {current.dtype}.")
        if len(record.shape) != current.dim() or any(s > c for s, c in zip(record.shape, current.shape, strict=True)):
            raise ArtifactError(
                f"{where}: header field 'shape' is {list(record.shape)}, which does not fit the model's "
                f"{list(current.shape)} (a compressed layer may only be smaller)."
            )
    if strict:
        missing = sorted(set(expected) - {r.name for r in artifact.tensors} - set(artifact.aliases))
        if missing:
            raise ArtifactError(f"{artifact.path}: the artifact lacks tensors of the model: {missing[:5]}.")


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
        # a shape alone (a meta tensor, from a header) takes the current tensor's device
        device = current.device if tensor.is_meta else tensor.device
        fresh = torch.empty(tensor.shape, dtype=tensor.dtype, device=device)
        if attr in owner._parameters:
            owner._parameters[attr] = nn.Parameter(fresh, requires_grad=current.requires_grad)
        else:
            owner._buffers[attr] = fresh
        _sync_shape_attributes(owner)


def _sync_shape_attributes(layer: nn.Module) -> None:
    weight = getattr(layer, "weight", None)
    if isinstance(layer, nn.Linear) and weight is not None:
        layer.out_features, layer.in_features = weight.shape
    elif isinstance(layer, nn.modules.conv._ConvNd) and weight is not None:
        depthwise = layer.groups > 1 and layer.groups == layer.out_channels and weight.shape[1] == 1
        layer.out_channels = weight.shape[0]
        if depthwise:  # one filter per channel: as many groups as channels remain
            layer.groups = weight.shape[0]
        layer.in_channels = weight.shape[1] * layer.groups
    elif isinstance(layer, nn.modules.batchnorm._NormBase):
        ref = weight if weight is not None else layer.running_mean
        if ref is not None:
            layer.num_features = ref.shape[0]
