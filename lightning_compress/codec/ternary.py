"""The ``ternary`` codec: symbols in {-1, 0, +1} times a per-channel (or per-tensor) fp32 scale.

The symbols are stored either packed at 2 bits each or ANS-coded (constriction) with their histogram, whichever is
smaller (recorded in ``meta["coding"]``); the scales follow in fp32. Decoding is exact: the decoded tensor equals
``symbols * scale`` computed in float32.

Random NTK-LC weights (:func:`~lightning_compress.functional.ternarization.sparse_ternary`) can instead be stored
as their generator seed and sparsity only (``coding="seed"``, an empty payload): the encoder regenerates the tensor
and refuses unless it matches bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lightning_compress.codec.base import Codec, EncodedTensor, dtype_from_name, dtype_name, register_codec
from lightning_compress.codec.entropy import ans_decode, ans_encode, pack_fixed, unpack_fixed
from lightning_compress.functional.ternarization import channel_rows, sparse_ternary

__all__ = ["TernaryCodec", "split_ternary"]


def split_ternary(tensor: torch.Tensor, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Recover (symbols in {-1,0,1}, scales) from a tensor whose rows hold one magnitude each.

    Raises:
        ValueError: when a row has more than one non-zero magnitude (the tensor is not ternary).
    """
    t = tensor.detach().cpu().float()
    rows = channel_rows(t, per_channel)
    magnitude = rows.abs()
    scales = magnitude.max(dim=1).values
    bad = ((magnitude != 0) & (magnitude != scales[:, None])).any(dim=1)
    if bool(bad.any()):
        raise ValueError(
            f"ternary codec: {int(bad.sum())} of {rows.shape[0]} rows hold more than one magnitude; ternarise the "
            "tensor first (symbols x one scale per row)."
        )
    symbols = torch.sign(rows).to(torch.int8)
    return symbols.numpy().reshape(-1), scales.numpy().astype(np.float32)


@register_codec
class TernaryCodec(Codec):
    """Ternary tensors; option ``per_channel`` (default True: one scale per output channel).

    Examples:
        >>> import torch
        >>> from lightning_compress.codec import get_codec
        >>> t = torch.tensor([[0.5, 0.0, -0.5], [0.0, 0.0, 2.0]])
        >>> enc = get_codec("ternary").encode(t)
        >>> torch.equal(get_codec("ternary").decode(enc), t), enc.meta["coding"]
        (True, 'packed')
    """

    name = "ternary"

    def encode(self, tensor: torch.Tensor, **options: Any) -> EncodedTensor:
        per_channel = bool(options.pop("per_channel", True))
        seed, sparsity = options.pop("seed", None), options.pop("sparsity", None)
        if options:
            raise TypeError(
                f"ternary codec got unknown options {sorted(options)}; accepted: per_channel, seed, sparsity."
            )
        if seed is not None:
            return self._encode_seed(tensor, int(seed), sparsity)
        symbols, scales = split_ternary(tensor, per_channel)
        codes = (symbols + 1).astype(np.int32)  # 0, 1, 2
        counts = np.bincount(codes, minlength=3).astype(np.uint32)
        candidates = {
            "packed": pack_fixed(codes, 2),
            "ans": counts.astype("<u4").tobytes() + ans_encode(codes, counts),
        }
        coding = min(candidates, key=lambda c: len(candidates[c]))
        return EncodedTensor(
            codec=self.name,
            shape=tuple(tensor.shape),
            dtype=dtype_name(tensor.dtype),
            meta={"coding": coding, "per_channel": per_channel and tensor.dim() > 1, "rows": int(scales.size)},
            payload=scales.astype("<f4").tobytes() + candidates[coding],
        )

    def _encode_seed(self, tensor: torch.Tensor, seed: int, sparsity: float | None) -> EncodedTensor:
        if sparsity is None:
            raise TypeError("ternary codec: option `seed` needs `sparsity` (the fraction of zeros it was drawn with).")
        regenerated = sparse_ternary(tuple(tensor.shape), float(sparsity), seed)
        if not torch.equal(regenerated.to(tensor.dtype), tensor.detach().cpu()):
            raise ValueError(
                f"ternary codec: the tensor is not sparse_ternary(shape, {sparsity}, seed={seed}); store its symbols "
                "instead (drop the `seed` option)."
            )
        return EncodedTensor(
            codec=self.name,
            shape=tuple(tensor.shape),
            dtype=dtype_name(tensor.dtype),
            meta={"coding": "seed", "seed": seed, "sparsity": float(sparsity), "generator": "numpy.RandomState"},
        )

    def decode(self, encoded: EncodedTensor) -> torch.Tensor:
        if encoded.meta["coding"] == "seed":
            values = sparse_ternary(encoded.shape, float(encoded.meta["sparsity"]), int(encoded.meta["seed"]))
            return values.to(dtype_from_name(encoded.dtype))
        rows = encoded.meta["rows"]
        if not isinstance(encoded.meta["per_channel"], bool):
            raise ValueError(f"ternary codec: `per_channel` must be a bool, got {encoded.meta['per_channel']!r}.")
        n = int(np.prod(encoded.shape)) if encoded.shape else 1
        if not isinstance(rows, int) or rows < min(n, 1) or (rows and n % rows) or len(encoded.payload) < 4 * rows:
            raise ValueError(f"ternary codec: {rows!r} scale rows do not fit a tensor of {n} values and its payload.")
        scales = np.frombuffer(encoded.payload[: 4 * rows], dtype="<f4")
        body = encoded.payload[4 * rows :]
        if encoded.meta["coding"] == "packed":
            codes = unpack_fixed(body, 2, n)
        elif encoded.meta["coding"] == "ans":
            codes = ans_decode(body[12:], np.frombuffer(body[:12], dtype="<u4"), n)
        else:
            raise ValueError(f"ternary codec: unknown coding {encoded.meta['coding']!r}.")
        if codes.size and codes.max() > 2:
            raise ValueError("ternary codec: symbol outside {-1, 0, +1} (corrupt data).")
        symbols = torch.from_numpy((codes - 1).astype(np.float32)).reshape(rows, -1)
        values = symbols * torch.from_numpy(scales.copy())[:, None]
        return values.reshape(encoded.shape).to(dtype_from_name(encoded.dtype))
