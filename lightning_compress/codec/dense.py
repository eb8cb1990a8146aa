"""The ``dense`` codec: raw values at full (fp32) or half (fp16) precision."""

from __future__ import annotations

from typing import Any

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

__all__ = ["DenseCodec"]

#: The float precisions the value-storing codecs (dense, sparse) write.
PRECISIONS = ("float32", "float16")


@register_codec
class DenseCodec(Codec):
    """Stores every value: floats at ``precision`` (``"float32"`` exact, ``"float16"`` lossy), other dtypes as is.

    Examples:
        >>> import torch
        >>> from lightning_compress.codec import get_codec
        >>> codec = get_codec("dense")
        >>> enc = codec.encode(torch.tensor([1.5, -2.0]), precision="float16")
        >>> len(enc.payload), codec.decode(enc).tolist()
        (4, [1.5, -2.0])
    """

    name = "dense"

    def encode(self, tensor: torch.Tensor, **options: Any) -> EncodedTensor:
        precision = options.pop("precision", "float32")
        if options:
            raise TypeError(f"dense codec got unknown options {sorted(options)}; accepted: ['precision'].")
        if precision not in PRECISIONS:
            raise ValueError(f"dense codec: `precision` must be one of {PRECISIONS}, got {precision!r}.")
        stored = tensor.detach()
        if stored.is_floating_point():
            stored = stored.to(dtype_from_name(precision))
        return EncodedTensor(
            codec=self.name,
            shape=tuple(tensor.shape),
            dtype=dtype_name(tensor.dtype),
            meta={"stored_dtype": dtype_name(stored.dtype)},
            payload=tensor_to_bytes(stored),
        )

    def decode(self, encoded: EncodedTensor) -> torch.Tensor:
        stored = tensor_from_bytes(encoded.payload, dtype_from_name(encoded.meta["stored_dtype"]), encoded.shape)
        return stored.to(dtype_from_name(encoded.dtype))
