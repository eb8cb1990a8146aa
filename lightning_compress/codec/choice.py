"""A tensor's codec chosen from its own values, when no compression method's decision is found for it.

Saving a module whose representation is not found (a compressed model rebuilt from a ``state_dict``, weights pruned
by another tool) or no longer holds (values changed by fine-tuning after the fit) must not silently fall back to
fp32. The values themselves say what they are: mostly zeros (``sparse``), few distinct values (``codebook``, or
``sparse_codebook`` with zeros kept apart), one magnitude per row (``ternary``). Every candidate that applies is
encoded, each encoding is decoded and checked equal to the tensor, and the smallest exact one is kept; the dense
encoding is the candidate to beat.
"""

from __future__ import annotations

import torch

from lightning_compress.codec.base import CodecSpec, EncodedTensor, get_codec

__all__ = ["MAX_CODEBOOK", "encoded_bytes", "smallest_exact", "value_candidates"]

#: The most distinct values a tensor may have for a codebook candidate (its codebook costs 4 bytes a value).
MAX_CODEBOOK = 4096
#: Tensors smaller than this are not worth a candidate's fixed cost.
_MIN_NUMEL = 64
#: A sparse candidate when at least this fraction of the values are zero.
_MIN_ZEROS = 0.2
_SAMPLE = 4096


def value_candidates(tensor: torch.Tensor) -> list[CodecSpec]:
    """The codecs worth trying on ``tensor`` by what its values look like (cheap tests first).

    Examples:
        >>> t = torch.zeros(20, 10)
        >>> t[::4] = torch.tensor([0.5, -0.5] * 5)
        >>> [spec.codec for spec in value_candidates(t)]
        ['sparse', 'codebook', 'sparse_codebook', 'ternary']
    """
    if not tensor.is_floating_point() or tensor.numel() < _MIN_NUMEL:
        return []
    flat = tensor.detach().reshape(-1).to("cpu", torch.float32)
    zeros = float((flat == 0).float().mean())
    candidates: list[CodecSpec] = []
    if zeros >= _MIN_ZEROS:
        candidates.append(CodecSpec("sparse"))
    step = max(1, flat.numel() // _SAMPLE)  # a strided sample says cheaply whether the full count can be small
    if torch.unique(flat[::step]).numel() <= MAX_CODEBOOK:
        values = torch.unique(flat)
        if values.numel() <= MAX_CODEBOOK:
            candidates.append(CodecSpec("codebook", {"codebook": values.tolist()}))
            nonzero = values[values != 0]
            if zeros > 0 and nonzero.numel():
                candidates.append(CodecSpec("sparse_codebook", {"codebook": nonzero.tolist()}))
    if tensor.dim() >= 2 and _one_magnitude_per_row(flat.reshape(tensor.shape[0], -1)):
        candidates.append(CodecSpec("ternary", {"per_channel": True}))
    elif _one_magnitude_per_row(flat.reshape(1, -1)):
        candidates.append(CodecSpec("ternary", {"per_channel": False}))
    return candidates


def _one_magnitude_per_row(rows: torch.Tensor) -> bool:
    magnitude = rows.abs()
    top = magnitude.max(dim=1, keepdim=True).values
    return bool(((magnitude == 0) | (magnitude == top)).all())


def encoded_bytes(encoded: EncodedTensor) -> int:
    """Bytes an encoding adds to a file: its payload and the shared blobs it brings."""
    return len(encoded.payload) + sum(len(blob) for blob in encoded.shared.values())


def smallest_exact(tensor: torch.Tensor, baseline: EncodedTensor) -> tuple[EncodedTensor, bool]:
    """The smallest exact encoding of ``tensor`` among its :func:`value_candidates` and ``baseline``.

    Returns:
        The encoding, and whether it is a candidate (``False``: the baseline stays).

    Examples:
        >>> t = torch.zeros(1000)
        >>> t[::100] = 1.5
        >>> dense = get_codec("dense").encode(t)
        >>> best, chosen = smallest_exact(t, dense)
        >>> best.codec, chosen, encoded_bytes(best) < encoded_bytes(dense)
        ('sparse_codebook', True, True)
    """
    best, chosen = baseline, False
    reference = tensor.detach().to("cpu")
    for spec in value_candidates(tensor):
        codec = get_codec(spec.codec)
        try:
            encoded = codec.encode(tensor, **dict(spec.options))
        except ValueError:
            continue  # the values do not fit this codec after all
        if encoded_bytes(encoded) < encoded_bytes(best) and torch.equal(codec.decode(encoded), reference):
            best, chosen = encoded, True
    return best, chosen
