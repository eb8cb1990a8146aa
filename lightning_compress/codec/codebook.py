"""The ``codebook`` codec: values from one shared codebook, indices entropy-coded.

The codebook (fp32) and the network-wide index histogram form one shared blob, stored once per artifact however many
tensors use it. Each tensor's indices are coded in the smallest of three ways, recorded in ``meta["coding"]``:
``shared`` (ANS with the network-wide histogram), ``own`` (ANS with the tensor's own histogram, stored with it) or
``fixed`` (``ceil(log2 K)`` bits per index).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lightning_compress.codec.base import Codec, EncodedTensor, dtype_from_name, dtype_name, register_codec
from lightning_compress.codec.entropy import ans_decode, ans_encode, pack_fixed, unpack_fixed

__all__ = ["CodebookCodec", "codebook_indices"]


def codebook_indices(tensor: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of every element of ``tensor`` in the sorted ``codebook``.

    Raises:
        ValueError: if some element is not exactly a codebook value.
    """
    flat = tensor.detach().reshape(-1).to("cpu", torch.float32)
    idx = torch.searchsorted(codebook, flat).clamp_(max=codebook.numel() - 1)
    bad = codebook[idx] != flat
    if bool(bad.any()):
        raise ValueError(
            f"codebook codec: {int(bad.sum())} of {flat.numel()} values are not in the codebook of "
            f"{codebook.numel()} values (e.g. {float(flat[bad][0])!r}); share the weights before saving."
        )
    return idx


def _index_bits(k: int) -> int:
    """Bits per index of the fixed-length coding of ``k`` codebook values."""
    return max(1, int(np.ceil(np.log2(max(k, 2)))))


@register_codec
class CodebookCodec(Codec):
    """Weights from a shared codebook; options ``codebook`` (sorted floats) and optional ``counts`` (histogram).

    Example:
        >>> import torch
        >>> from lightning_compress.codec import get_codec
        >>> codec = get_codec("codebook")
        >>> t = torch.tensor([0.5, -1.0, 0.5, 0.5])
        >>> enc = codec.encode(t, codebook=[-1.0, 0.5])
        >>> torch.equal(codec.decode(enc), t)
        True
    """

    name = "codebook"

    def encode(self, tensor: torch.Tensor, **options: Any) -> EncodedTensor:
        codebook_values: Sequence[float] = options.pop("codebook")
        counts_opt: Sequence[int] | None = options.pop("counts", None)
        if options:
            raise TypeError(f"codebook codec got unknown options {sorted(options)}; accepted: codebook, counts.")
        codebook = torch.tensor(list(codebook_values), dtype=torch.float32)
        if codebook.numel() == 0 or bool((codebook[1:] <= codebook[:-1]).any()):
            raise ValueError("codebook codec: `codebook` must be non-empty and strictly increasing.")
        k = codebook.numel()
        symbols = codebook_indices(tensor, codebook).numpy().astype(np.int32)
        shared_counts = None if counts_opt is None else np.asarray(list(counts_opt), dtype=np.uint32)
        if shared_counts is not None and shared_counts.size != k:
            raise ValueError(f"codebook codec: `counts` has {shared_counts.size} entries for {k} codebook values.")
        shared_blob = codebook.numpy().astype("<f4").tobytes() + (
            shared_counts.astype("<u4").tobytes() if shared_counts is not None else b""
        )
        key = "codebook-" + hashlib.sha256(shared_blob).hexdigest()[:16]

        own_counts = np.bincount(symbols, minlength=k).astype(np.uint32)
        bits = _index_bits(k)
        candidates: dict[str, bytes] = {
            "fixed": pack_fixed(symbols, bits),
            "own": own_counts.astype("<u4").tobytes() + ans_encode(symbols, own_counts),
        }
        if shared_counts is not None and bool((shared_counts[own_counts > 0] > 0).all()):
            candidates["shared"] = ans_encode(symbols, shared_counts)
        coding = min(candidates, key=lambda c: len(candidates[c]))
        return EncodedTensor(
            codec=self.name,
            shape=tuple(tensor.shape),
            dtype=dtype_name(tensor.dtype),
            meta={"key": key, "k": k, "coding": coding, "has_counts": shared_counts is not None},
            payload=candidates[coding],
            shared={key: shared_blob},
        )

    def decode(self, encoded: EncodedTensor) -> torch.Tensor:
        meta = encoded.meta
        k = meta["k"]
        blob = encoded.shared[meta["key"]]
        if not isinstance(meta["has_counts"], bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"codebook codec: `k`={k!r} / `has_counts`={meta['has_counts']!r} are not int / bool.")
        if len(blob) != (8 if meta["has_counts"] else 4) * k:
            raise ValueError(f"codebook codec: a shared blob of {len(blob)} bytes is not a codebook of k={k!r} values.")
        codebook = np.frombuffer(blob[: 4 * k], dtype="<f4")
        n = 1
        for s in encoded.shape:
            n *= s
        coding = meta["coding"]
        if coding == "fixed":
            symbols = unpack_fixed(encoded.payload, _index_bits(k), n)
        elif coding == "own":
            counts = np.frombuffer(encoded.payload[: 4 * k], dtype="<u4")
            symbols = ans_decode(encoded.payload[4 * k :], counts, n)
        elif coding == "shared":
            symbols = ans_decode(encoded.payload, np.frombuffer(blob[4 * k : 8 * k], dtype="<u4"), n)
        else:
            raise ValueError(f"codebook codec: unknown coding {coding!r}.")
        if symbols.size and (symbols.min() < 0 or symbols.max() >= k):
            raise ValueError("codebook codec: decoded index outside the codebook (corrupt data).")
        values = torch.from_numpy(codebook[symbols].copy())
        return values.reshape(encoded.shape).to(dtype_from_name(encoded.dtype))
