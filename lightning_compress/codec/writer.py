"""Writing an artifact: each tensor's codec chosen (asked, decided, or the smallest exact one), encoded, framed.

It takes a state dict and what was decided for it; finding those decisions on a model is the caller's business
(:func:`lightning_compress.save`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Set
from pathlib import Path
from typing import Any

import torch

from lightning_compress.codec.base import CodecSpec, EncodedTensor, forget_caches, get_codec
from lightning_compress.codec.choice import smallest_exact
from lightning_compress.codec.frame import atomic_write, frame
from lightning_compress.codec.records import (
    SOURCE_ASKED,
    SOURCE_DEFAULT,
    SOURCE_REPRESENTATION,
    SOURCE_STALE,
    SOURCE_VALUES,
)

__all__ = ["resolve_spec", "tied_aliases", "write_artifact"]


def resolve_spec(spec: CodecSpec | str | Mapping[str, Any]) -> CodecSpec:
    """A codec given as a name, a :class:`CodecSpec` or a mapping with ``codec`` (and ``options``).

    Raises:
        TypeError: for anything else.
    """
    if isinstance(spec, CodecSpec):
        return spec
    if isinstance(spec, str):
        return CodecSpec(spec)
    if isinstance(spec, Mapping) and "codec" in spec:
        return CodecSpec(str(spec["codec"]), dict(spec.get("options", {})))
    raise TypeError(f"`codecs` values must be a codec name, a CodecSpec or a mapping with 'codec'; got {spec!r}.")


def write_artifact(
    path: str | os.PathLike[str],
    state: Mapping[str, torch.Tensor],
    *,
    parameters: Set[str],
    decided: Mapping[str, CodecSpec],
    asked: Mapping[str, CodecSpec],
    precision: str,
    codecs_decided: bool,
    aliases: Mapping[str, str],
    header: Mapping[str, Any],
) -> Path:
    """Encode ``state`` and write it as one artifact, atomically.

    Args:
        path: destination file.
        state: the tensors, in the order they are stored.
        parameters: the names that are parameters (the others are buffers).
        decided: what the compression methods decided, tensor name -> codec.
        asked: the caller's overrides, tensor name -> codec.
        precision: ``"float32"`` or ``"float16"``: the dense codec's precision for tensors nothing decided.
        codecs_decided: ``asked`` holds a method's decisions not yet recorded (recorded as decided).
        aliases: tied names (alias -> stored name, :func:`tied_aliases`): written once.
        header: the rest of the header (architecture, inserted modules, metadata, reference bytes).

    Returns:
        The path written.
    """
    records: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    shared_blobs: dict[str, bytes] = {}
    offset = 0
    try:  # a codec may cache a decoded shared stream (as large as the model) while checking its encodings
        for name, tensor in state.items():
            if name in aliases:
                continue  # one tensor under two names: written once, the alias restored on load
            encoded, source = _encode(name, tensor, asked.get(name), decided.get(name), precision)
            if codecs_decided and source == SOURCE_ASKED:
                source = SOURCE_REPRESENTATION
            for key, blob in encoded.shared.items():
                if shared_blobs.setdefault(key, blob) != blob:
                    raise ValueError(f"Codec {encoded.codec!r} produced two different shared blobs under key {key!r}.")
            record = {
                "name": name,
                "role": "parameter" if name in parameters else "buffer",
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
    full = {
        **header,
        "tensors": records,
        "shared": shared_index,
        **({"aliases": dict(aliases)} if aliases else {}),
    }
    return atomic_write(Path(path), frame(full, blobs))


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

    Examples:
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
