"""The ``codebook`` codec: values from one shared codebook, indices entropy-coded.

The codebook (fp32) and the network-wide index histogram form one shared blob, stored once per artifact however many
tensors use it. Each tensor's indices are coded in the smallest of three ways, recorded in ``meta["coding"]``:
``shared`` (ANS with the network-wide histogram), ``own`` (ANS with the tensor's own histogram, stored with it) or
``fixed`` (``ceil(log2 K)`` bits per index).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lightning_compress.codec.base import Codec, EncodedTensor, dtype_from_name, dtype_name, register_codec
from lightning_compress.codec.entropy import ans_decode, ans_encode, pack_fixed, unpack_fixed

__all__ = ["CodebookCodec", "SharedCodebook", "codebook_indices"]


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


@dataclass(frozen=True)
class SharedCodebook:
    """A codebook and its optional network-wide index histogram, as one shared blob (``codebook`` codecs)."""

    values: torch.Tensor
    counts: np.ndarray | None

    @property
    def k(self) -> int:
        """Number of codebook values."""
        return int(self.values.numel())

    @property
    def blob(self) -> bytes:
        """The stored form: fp32 values, then the counts as uint32 (when given)."""
        counts = self.counts.astype("<u4").tobytes() if self.counts is not None else b""
        return self.values.numpy().astype("<f4").tobytes() + counts

    @property
    def key(self) -> str:
        """The blob's key in the artifact (by content: one blob however many tensors use it)."""
        return "codebook-" + hashlib.sha256(self.blob).hexdigest()[:16]

    @classmethod
    def from_options(cls, codec: str, options: dict[str, Any], zero_allowed: bool = True) -> SharedCodebook:
        """Pop and check ``codebook`` and ``counts`` from a codec's options (``codec`` names it in errors)."""
        values = torch.tensor(list(options.pop("codebook")), dtype=torch.float32)
        counts_opt = options.pop("counts", None)
        if options:
            raise TypeError(f"{codec} codec got unknown options {sorted(options)}; accepted: codebook, counts.")
        has_zero = not zero_allowed and bool((values == 0).any())
        if values.numel() == 0 or bool((values[1:] <= values[:-1]).any()) or has_zero:
            without = "" if zero_allowed else ", without 0"
            raise ValueError(f"{codec} codec: `codebook` must be non-empty and strictly increasing{without}.")
        counts = None if counts_opt is None else np.asarray(list(counts_opt), dtype=np.uint32)
        if counts is not None and counts.size != values.numel():
            raise ValueError(f"{codec} codec: `counts` has {counts.size} entries for {values.numel()} codebook values.")
        return cls(values, counts)

    def counts_for(self, own_counts: np.ndarray) -> np.ndarray | None:
        """The shared histogram, if it can code a tensor with ``own_counts`` (every symbol it uses has a count)."""
        if self.counts is None or not bool((self.counts[own_counts > 0] > 0).all()):
            return None
        return self.counts

    def encoded(self, codec: str, tensor: torch.Tensor, candidates: dict[str, bytes]) -> EncodedTensor:
        """The tensor coded the shortest of the ``candidates`` ways (coding name -> payload), with this blob shared."""
        coding = min(candidates, key=lambda c: len(candidates[c]))
        return EncodedTensor(
            codec=codec,
            shape=tuple(tensor.shape),
            dtype=dtype_name(tensor.dtype),
            meta={"key": self.key, "k": self.k, "coding": coding, "has_counts": self.counts is not None},
            payload=candidates[coding],
            shared={self.key: self.blob},
        )

    @staticmethod
    def read(codec: str, meta: dict[str, Any], blob: bytes) -> tuple[np.ndarray, np.ndarray | None]:
        """(values, counts or None) of a stored blob, checked against the record's ``k`` and ``has_counts``."""
        k, has_counts = meta["k"], meta["has_counts"]
        if not isinstance(has_counts, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"{codec} codec: `k`={k!r} / `has_counts`={has_counts!r} are not int / bool.")
        if len(blob) != (8 if has_counts else 4) * k:
            raise ValueError(f"{codec} codec: a shared blob of {len(blob)} bytes is not a codebook of k={k!r} values.")
        counts = np.frombuffer(blob[4 * k : 8 * k], dtype="<u4") if has_counts else None
        return np.frombuffer(blob[: 4 * k], dtype="<f4"), counts


def _index_bits(k: int) -> int:
    """Bits per index of the fixed-length coding of ``k`` codebook values."""
    return max(1, int(np.ceil(np.log2(max(k, 2)))))


@register_codec
class CodebookCodec(Codec):
    """Weights from a shared codebook; options ``codebook`` (sorted floats) and optional ``counts`` (histogram).

    Examples:
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
        shared = SharedCodebook.from_options(self.name, options)
        codebook, k = shared.values, shared.k
        symbols = codebook_indices(tensor, codebook).numpy().astype(np.int32)

        own_counts = np.bincount(symbols, minlength=k).astype(np.uint32)
        bits = _index_bits(k)
        candidates: dict[str, bytes] = {
            "fixed": pack_fixed(symbols, bits),
            "own": own_counts.astype("<u4").tobytes() + ans_encode(symbols, own_counts),
        }
        if (shared_counts := shared.counts_for(own_counts)) is not None:
            candidates["shared"] = ans_encode(symbols, shared_counts)
        return shared.encoded(self.name, tensor, candidates)

    def decode(self, encoded: EncodedTensor) -> torch.Tensor:
        meta = encoded.meta
        codebook, blob_counts = SharedCodebook.read(self.name, meta, encoded.shared[meta["key"]])
        k = int(meta["k"])
        n = 1
        for s in encoded.shape:
            n *= s
        coding = meta["coding"]
        if coding == "fixed":
            symbols = unpack_fixed(encoded.payload, _index_bits(k), n)
        elif coding == "own":
            counts = np.frombuffer(encoded.payload[: 4 * k], dtype="<u4")
            symbols = ans_decode(encoded.payload[4 * k :], counts, n)
        elif coding == "shared" and blob_counts is not None:
            symbols = ans_decode(encoded.payload, blob_counts, n)
        else:
            raise ValueError(f"codebook codec: unknown coding {coding!r}.")
        if symbols.size and (symbols.min() < 0 or symbols.max() >= k):
            raise ValueError("codebook codec: decoded index outside the codebook (corrupt data).")
        values = torch.from_numpy(codebook[symbols].copy())
        return values.reshape(encoded.shape).to(dtype_from_name(encoded.dtype))
