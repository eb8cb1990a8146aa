"""The ``surp`` codec: one tensor's slice of a shared SuRP stream, decoded bit-exactly from the parsed stream.

Also each tensor's share of the stream's bytes, for the size report. The stream itself:
:mod:`~lightning_compress.codec.surp`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from lightning_compress.codec.base import Codec, EncodedTensor, dtype_from_name, dtype_name, register_codec
from lightning_compress.codec.surp import head_bytes, parse_stream
from lightning_compress.functional.successive_pruning import SurpResult, reconstruct

__all__ = ["SurpCodec"]


@lru_cache(maxsize=1)
def _parsed(blob: bytes) -> tuple[SurpResult, np.ndarray, np.ndarray]:
    """The parsed stream that every tensor of it decodes its slice from.

    Rounds and signs: memory of the picks, not of a float64 vector of all positions.
    """
    return parse_stream(blob)


@lru_cache(maxsize=1)
def _key(blob: bytes) -> str:
    """The stream's key among the artifact's shared blobs: hashed once, not once per tensor that reads it."""
    return "surp-" + hashlib.sha256(blob).hexdigest()[:16]


def _signed_slice(blob: bytes, start: int, count: int) -> np.ndarray:
    """``sign * û`` (float64) of positions ``[start, start + count)``: the same bits as the whole vector's slice."""
    result, signed, negative = _parsed(blob)
    values = reconstruct(result, start, count)
    lo, hi = np.searchsorted(signed, (start, start + count))
    values[signed[lo:hi][negative[lo:hi]] - start] *= -1.0
    return values


@register_codec
class SurpCodec(Codec):
    """One tensor's slice of a shared SuRP stream.

    Options (set by the SuccessivePruning callback): ``stream`` (the bytes), ``offset`` and ``numel`` (the slice of
    the flattened vector), ``norm`` (the tensor's L2 norm). The stored values are ``sign * û * norm`` in float32;
    the codec checks that the tensor equals them (``check=False``: not, for a trial of the file's size whose
    weights were just written from the same refinement).
    """

    name = "surp"

    def encode(self, tensor: torch.Tensor, **options: Any) -> EncodedTensor:
        stream: bytes = options.pop("stream")
        offset, numel, norm = int(options.pop("offset")), int(options.pop("numel")), float(options.pop("norm"))
        check = bool(options.pop("check", True))
        if options:
            raise TypeError(f"surp codec got unknown options {sorted(options)}.")
        if numel != tensor.numel():
            raise ValueError(f"surp codec: slice of {numel} values for a tensor of {tensor.numel()}.")
        key = _key(stream)
        encoded = EncodedTensor(
            codec=self.name,
            shape=tuple(tensor.shape),
            dtype=dtype_name(tensor.dtype),
            meta={"key": key, "offset": offset, "norm": norm},
            payload=b"",
            shared={key: stream},
        )
        if check and not torch.equal(self.decode(encoded), tensor.detach().cpu()):
            raise ValueError(
                "surp codec: the tensor differs from the SuRP reconstruction in the stream; compress it with "
                "SuccessivePruning (or write it with another codec)."
            )
        return encoded

    def attribute_shared(self, blob: bytes, tensors: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
        """Each tensor's share of the stream: the coded bytes in proportion to its picks (our rule).

        Every pick (a new position with its sign and first round, or a refinement) belongs to one tensor; the
        stream's head (version, thresholds, sizes) stays the blob's own overhead. Picks are weighted equally, so a
        tensor with denser, cheaper positions is charged a little more than its exact entropy.
        """
        result = _parsed(blob)[0]
        names = list(tensors)
        starts = np.array([int(tensors[name]["offset"]) for name in names], dtype=np.int64)
        ends = starts + np.array([int(tensors[name]["numel"]) for name in names], dtype=np.int64)
        counts = np.zeros(len(names), dtype=np.int64)
        for positions in result.rounds:  # each round ascending: a tensor's picks in it are a range
            counts += np.searchsorted(positions, ends) - np.searchsorted(positions, starts)
        head = head_bytes(blob)
        total = max(result.picks, 1)
        return {name: (len(blob) - head) * int(count) // total for name, count in zip(names, counts, strict=True)}

    def forget(self) -> None:
        _parsed.cache_clear()
        _key.cache_clear()

    def decode(self, encoded: EncodedTensor) -> torch.Tensor:
        meta = encoded.meta
        blob = encoded.shared[meta["key"]]
        size = _parsed(blob)[0].n
        n = math.prod(encoded.shape)
        start, norm = meta["offset"], meta["norm"]
        if not (
            isinstance(start, int) and start >= 0 and isinstance(norm, float) and math.isfinite(norm) and norm >= 0
        ):
            raise ValueError(
                f"surp codec: `offset`={start!r} / `norm`={norm!r} are not an int >= 0 / a finite float >= 0."
            )
        if start + n > size:
            raise ValueError("surp codec: tensor slice outside the stream.")
        with np.errstate(over="ignore"):
            values = (_signed_slice(blob, start, n) * norm).astype(np.float32)
        if not np.isfinite(values).all():
            raise ValueError(f"surp codec: `norm`={norm!r} takes values past float32's range.")
        return torch.from_numpy(values).reshape(encoded.shape).to(dtype_from_name(encoded.dtype))
