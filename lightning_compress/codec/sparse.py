"""The ``sparse`` codec: a pruned tensor whose surviving values are arbitrary floats.

What a tensor that is mostly zeros but shares no values is written with when nothing decided its codec (a model
pruned by another tool, or a compressed model fine-tuned further with its masks held): the **support** as gaps,
Exp-Golomb split and ANS-coded as in the ``surp`` and ``sparse_codebook`` codecs, then the non-zero values raw in
float32 (exact) or float16 (option ``precision``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from lightning_compress.codec.base import (
    Codec,
    EncodedTensor,
    dtype_from_name,
    dtype_name,
    register_codec,
    tensor_from_bytes,
    tensor_to_bytes,
)
from lightning_compress.codec.bits import BitReader, BitWriter, read_exp_golomb, write_exp_golomb
from lightning_compress.codec.dense import PRECISIONS
from lightning_compress.codec.entropy import AnsStackReader, leb128

__all__ = ["SparseCodec", "read_support", "write_support"]


def write_support(w: BitWriter, support: np.ndarray) -> None:
    """The positions of the non-zeros: their count, then their gaps Exp-Golomb split (buckets ANS-coded)."""
    w.varint(int(support.size))
    if support.size:
        write_exp_golomb(w, np.diff(support, prepend=-1))


def read_support(payload: bytes, n: int, codec: str) -> tuple[BitReader, AnsStackReader, np.ndarray]:
    """Open a stream that :func:`write_support` began.

    Returns:
        The reader, its ANS stream (not yet finished: the caller reads on, then finishes it) and the positions,
        checked to lie inside a tensor of ``n`` values (``codec`` names the codec in errors).
    """
    head = BitReader(payload, 0)
    ans = AnsStackReader(head.block())
    r = BitReader(payload, head.pos)
    r.ans = ans
    count = r.varint()
    if count > n:
        raise ValueError(f"{codec} codec: {count} non-zeros in a tensor of {n} values (corrupt data).")
    support = np.cumsum(read_exp_golomb(r, count)) - 1 if count else np.zeros(0, dtype=np.int64)
    if count and support[-1] >= n:
        raise ValueError(f"{codec} codec: a position lies outside the tensor (corrupt data).")
    return r, ans, support


@register_codec
class SparseCodec(Codec):
    """Positions of the non-zeros (entropy-coded gaps) and their values; option ``precision``.

    Examples:
        >>> import torch
        >>> from lightning_compress.codec import get_codec
        >>> codec = get_codec("sparse")
        >>> t = torch.zeros(1000)
        >>> t[[3, 500, 999]] = torch.tensor([0.125, -2.5, 7.0])
        >>> enc = codec.encode(t)
        >>> torch.equal(codec.decode(enc), t), len(enc.payload) < 40
        (True, True)
    """

    name = "sparse"

    def encode(self, tensor: torch.Tensor, **options: Any) -> EncodedTensor:
        precision = options.pop("precision", "float32")
        if options:
            raise TypeError(f"sparse codec got unknown options {sorted(options)}; accepted: ['precision'].")
        if precision not in PRECISIONS:
            raise ValueError(f"sparse codec: `precision` must be one of {PRECISIONS}, got {precision!r}.")
        if not tensor.is_floating_point():
            raise ValueError(f"sparse codec stores floating-point tensors, got {tensor.dtype}.")
        flat = tensor.detach().reshape(-1).to("cpu")
        support = torch.nonzero(flat).reshape(-1).numpy()
        w = BitWriter()
        write_support(w, support)
        ans = w.ans.finish()
        values = flat[torch.from_numpy(support)].to(dtype_from_name(precision))
        return EncodedTensor(
            codec=self.name,
            shape=tuple(tensor.shape),
            dtype=dtype_name(tensor.dtype),
            meta={"stored_dtype": precision},
            payload=leb128([len(ans)]) + ans + b"".join(w.parts) + tensor_to_bytes(values),
        )

    def decode(self, encoded: EncodedTensor) -> torch.Tensor:
        stored = encoded.meta.get("stored_dtype")
        if stored not in PRECISIONS:
            raise ValueError(f"sparse codec: `stored_dtype` must be one of {PRECISIONS}, got {stored!r}.")
        n = math.prod(encoded.shape)
        r, ans, support = read_support(encoded.payload, n, self.name)
        ans.finish()
        values = tensor_from_bytes(encoded.payload[r.pos :], dtype_from_name(stored), (support.size,))
        out = torch.zeros(n, dtype=torch.float32)
        out[torch.from_numpy(support.astype(np.int64))] = values.float()
        return out.reshape(encoded.shape).to(dtype_from_name(encoded.dtype))
