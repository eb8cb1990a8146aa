"""The ``sparse_codebook`` codec: a pruned tensor whose surviving values come from one shared codebook.

Prune, share, entropy-code (the Deep Compression pipeline, with our methods at each step). One stream per tensor:

* the **support** (positions of the non-zeros) as gaps, Exp-Golomb split as in the ``surp`` codec: the bucket
  ``floor(log2 gap)`` ANS-coded with its histogram, the low bits raw;
* the **codebook index of every non-zero**, ANS-coded with the network-wide histogram of the non-zeros (stored once
  with the codebook, like the ``codebook`` codec) or the tensor's own when that is shorter or the shared one lacks
  a symbol.

Zero is never a codebook value: pruned entries stay exactly zero whatever the codebook.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lightning_compress.codec.base import Codec, EncodedTensor, dtype_from_name, dtype_name, register_codec
from lightning_compress.codec.codebook import codebook_indices
from lightning_compress.codec.entropy import AnsStackReader, leb128
from lightning_compress.codec.surp import _read_exp_golomb, _Reader, _write_exp_golomb, _Writer

__all__ = ["SparseCodebookCodec"]


@register_codec
class SparseCodebookCodec(Codec):
    """Support as gaps plus codebook indices of the non-zeros, one ANS stream; options ``codebook``, ``counts``.

    ``codebook``: the shared non-zero values (sorted, without 0); ``counts``: optional network-wide histogram of the
    non-zeros' indices.

    Example:
        >>> import torch
        >>> from lightning_compress.codec import get_codec
        >>> codec = get_codec("sparse_codebook")
        >>> t = torch.tensor([0.0, 0.5, 0.0, 0.0, -1.0, 0.5, 0.0, 0.0])
        >>> enc = codec.encode(t, codebook=[-1.0, 0.5])
        >>> torch.equal(codec.decode(enc), t)
        True
    """

    name = "sparse_codebook"

    def encode(self, tensor: torch.Tensor, **options: Any) -> EncodedTensor:
        codebook_values: Sequence[float] = options.pop("codebook")
        counts_opt: Sequence[int] | None = options.pop("counts", None)
        if options:
            raise TypeError(f"sparse_codebook codec got unknown options {sorted(options)}; accepted: codebook, counts.")
        codebook = torch.tensor(list(codebook_values), dtype=torch.float32)
        if codebook.numel() == 0 or bool((codebook[1:] <= codebook[:-1]).any()) or bool((codebook == 0).any()):
            raise ValueError("sparse_codebook codec: `codebook` must be non-empty, strictly increasing, without 0.")
        k = codebook.numel()
        flat = tensor.detach().reshape(-1).to("cpu", torch.float32)
        support = np.flatnonzero(flat.numpy() != 0)
        symbols = codebook_indices(flat[torch.from_numpy(support)], codebook).numpy().astype(np.int32)
        shared_counts = None if counts_opt is None else np.asarray(list(counts_opt), dtype=np.uint32)
        if shared_counts is not None and shared_counts.size != k:
            raise ValueError(f"sparse_codebook codec: `counts` has {shared_counts.size} entries for {k} values.")
        shared_blob = codebook.numpy().astype("<f4").tobytes() + (
            shared_counts.astype("<u4").tobytes() if shared_counts is not None else b""
        )
        key = "codebook-" + hashlib.sha256(shared_blob).hexdigest()[:16]

        own_counts = np.bincount(symbols, minlength=k).astype(np.uint32)
        candidates = {"own": self._stream(support, symbols, own_counts, write_counts=True)}
        if shared_counts is not None and bool((shared_counts[own_counts > 0] > 0).all()):
            candidates["shared"] = self._stream(support, symbols, shared_counts, write_counts=False)
        coding = min(candidates, key=lambda c: len(candidates[c]))
        return EncodedTensor(
            codec=self.name,
            shape=tuple(tensor.shape),
            dtype=dtype_name(tensor.dtype),
            meta={"key": key, "k": k, "coding": coding, "has_counts": shared_counts is not None},
            payload=candidates[coding],
            shared={key: shared_blob},
        )

    @staticmethod
    def _stream(support: np.ndarray, symbols: np.ndarray, counts: np.ndarray, write_counts: bool) -> bytes:
        w = _Writer()
        w.varint(int(support.size))
        if support.size:
            _write_exp_golomb(w, np.diff(support, prepend=-1))
            if write_counts:
                w.block(counts.astype("<u4").tobytes())
            w.ans.add(symbols, counts)
        ans = w.ans.finish()
        return leb128([len(ans)]) + ans + b"".join(w.parts)

    def decode(self, encoded: EncodedTensor) -> torch.Tensor:
        meta = encoded.meta
        k = meta["k"]
        blob = encoded.shared[meta["key"]]
        if not isinstance(meta["has_counts"], bool) or not isinstance(k, int) or k < 1:
            raise ValueError(
                f"sparse_codebook codec: `k`={k!r} / `has_counts`={meta['has_counts']!r} are not int/bool."
            )
        if len(blob) != (8 if meta["has_counts"] else 4) * k:
            raise ValueError(f"sparse_codebook codec: a shared blob of {len(blob)} bytes is not a codebook of k={k}.")
        if meta["coding"] not in ("own", "shared") or (meta["coding"] == "shared" and not meta["has_counts"]):
            raise ValueError(f"sparse_codebook codec: unknown coding {meta['coding']!r}.")
        codebook = np.frombuffer(blob[: 4 * k], dtype="<f4")
        n = 1
        for s in encoded.shape:
            n *= s
        head = _Reader(encoded.payload, 0)
        ans = head.block()
        r = _Reader(encoded.payload, head.pos)
        r.ans = AnsStackReader(ans)
        count = r.varint()
        if count > n:
            raise ValueError(f"sparse_codebook codec: {count} non-zeros in a tensor of {n} values (corrupt data).")
        values = np.zeros(n, dtype=np.float32)
        if count:
            support = np.cumsum(_read_exp_golomb(r, count)) - 1
            if support[-1] >= n:
                raise ValueError("sparse_codebook codec: a position lies outside the tensor (corrupt data).")
            if meta["coding"] == "own":
                data = r.block()
                if len(data) != 4 * k:
                    raise ValueError("sparse_codebook codec: the tensor's own histogram is truncated.")
                counts = np.frombuffer(data, dtype="<u4")
            else:
                counts = np.frombuffer(blob[4 * k : 8 * k], dtype="<u4")
            symbols = r.ans.take(counts, count)
            if symbols.size and (symbols.min() < 0 or symbols.max() >= k):
                raise ValueError("sparse_codebook codec: decoded index outside the codebook (corrupt data).")
            values[support] = codebook[symbols]
        r.ans.finish()
        if r.pos != len(encoded.payload):
            raise ValueError("sparse_codebook codec: trailing bytes (corrupt data).")
        return torch.from_numpy(values).reshape(encoded.shape).to(dtype_from_name(encoded.dtype))
