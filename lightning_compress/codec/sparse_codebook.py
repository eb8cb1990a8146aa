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

import math
from typing import Any

import numpy as np
import torch

from lightning_compress.codec.base import Codec, EncodedTensor, dtype_from_name, register_codec
from lightning_compress.codec.bits import BitWriter
from lightning_compress.codec.codebook import SharedCodebook, codebook_indices
from lightning_compress.codec.entropy import leb128
from lightning_compress.codec.sparse import read_support, write_support

__all__ = ["SparseCodebookCodec"]


@register_codec
class SparseCodebookCodec(Codec):
    """Support as gaps plus codebook indices of the non-zeros, one ANS stream; options ``codebook``, ``counts``.

    ``codebook``: the shared non-zero values (sorted, without 0); ``counts``: optional network-wide histogram of the
    non-zeros' indices.

    Examples:
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
        shared = SharedCodebook.from_options(self.name, options, zero_allowed=False)
        codebook, k = shared.values, shared.k
        flat = tensor.detach().reshape(-1).to("cpu", torch.float32)
        support = np.flatnonzero(flat.numpy() != 0)
        symbols = codebook_indices(flat[torch.from_numpy(support)], codebook).numpy().astype(np.int32)

        own_counts = np.bincount(symbols, minlength=k).astype(np.uint32)
        candidates = {"own": self._stream(support, symbols, own_counts, write_counts=True)}
        if (shared_counts := shared.counts_for(own_counts)) is not None:
            candidates["shared"] = self._stream(support, symbols, shared_counts, write_counts=False)
        return shared.encoded(self.name, tensor, candidates)

    @staticmethod
    def _stream(support: np.ndarray, symbols: np.ndarray, counts: np.ndarray, write_counts: bool) -> bytes:
        w = BitWriter()
        write_support(w, support)
        if support.size:
            if write_counts:
                w.block(counts.astype("<u4").tobytes())
            w.ans.add(symbols, counts)
        ans = w.ans.finish()
        return leb128([len(ans)]) + ans + b"".join(w.parts)

    def decode(self, encoded: EncodedTensor) -> torch.Tensor:
        meta = encoded.meta
        codebook, blob_counts = SharedCodebook.read(self.name, meta, encoded.shared[meta["key"]])
        k = int(meta["k"])
        if meta["coding"] not in ("own", "shared") or (meta["coding"] == "shared" and blob_counts is None):
            raise ValueError(f"sparse_codebook codec: unknown coding {meta['coding']!r}.")
        n = math.prod(encoded.shape)
        r, ans, support = read_support(encoded.payload, n, self.name)
        count = int(support.size)
        values = np.zeros(n, dtype=np.float32)
        if count:
            if meta["coding"] == "own":
                data = r.block()
                if len(data) != 4 * k:
                    raise ValueError("sparse_codebook codec: the tensor's own histogram is truncated.")
                counts = np.frombuffer(data, dtype="<u4")
            else:
                assert blob_counts is not None  # noqa: S101 - checked above
                counts = blob_counts
            symbols = ans.take(counts, count)
            if symbols.size and (symbols.min() < 0 or symbols.max() >= k):
                raise ValueError("sparse_codebook codec: decoded index outside the codebook (corrupt data).")
            values[support] = codebook[symbols]
        ans.finish()
        if r.pos != len(encoded.payload):
            raise ValueError("sparse_codebook codec: trailing bytes (corrupt data).")
        return torch.from_numpy(values).reshape(encoded.shape).to(dtype_from_name(encoded.dtype))
