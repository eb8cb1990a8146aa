"""Bit-level primitives the entropy-coded codecs share: writers, readers, Exp-Golomb codes, histograms, bit packing.

Gaps and counts (``>= 1``) are coded as an Exp-Golomb split: the bucket ``floor(log2 g)`` ANS-coded with its
histogram (one byte per entry, log-quantized), the ``bucket`` low bits raw.
"""

from __future__ import annotations

import numpy as np

from lightning_compress.codec.entropy import AnsStackReader, AnsStackWriter, ans_decode, leb128

#: The stream version a reader assumes (version 1 of the SuRP stream wrote exact histograms as varints).
LATEST_VERSION = 2

__all__ = [
    "LATEST_VERSION",
    "BitReader",
    "BitWriter",
    "dequantized_counts",
    "exp_golomb_buckets",
    "histogram_bits",
    "pack_variable_bits",
    "quantized_counts",
    "read_exp_golomb",
    "read_histogram",
    "unpack_variable_bits",
    "write_exp_golomb",
    "write_histogram",
]


class BitWriter:
    """Byte parts and one ANS stream, appended in write order (see :meth:`getvalue`)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.ans = AnsStackWriter()  # every ANS-coded sequence of the stream, in write order

    def varint(self, value: int) -> None:
        self.parts.append(leb128([value]))

    def block(self, data: bytes) -> None:
        self.varint(len(data))
        self.parts.append(data)


class BitReader:
    """Reads what :class:`BitWriter` wrote, from ``offset`` of ``data``."""

    def __init__(self, data: bytes, offset: int, version: int = LATEST_VERSION) -> None:
        self.data, self.pos, self.version = data, offset, version
        self.ans: AnsStackReader | None = None  # version 2: one ANS stream for all sequences

    def symbols(self, counts: np.ndarray, n: int) -> np.ndarray:
        """The next ``n`` ANS-coded symbols: from the shared stream (version 2) or their own block (version 1)."""
        if self.ans is None:
            return ans_decode(self.block(), counts, n)
        return self.ans.take(counts, n)

    def varint(self) -> int:
        value = shift = 0
        while True:
            if self.pos >= len(self.data):
                raise ValueError("surp stream truncated (varint).")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    def block(self) -> bytes:
        size = self.varint()
        if self.pos + size > len(self.data):
            raise ValueError("surp stream truncated (block).")
        out = self.data[self.pos : self.pos + size]
        self.pos += size
        return out


def quantized_counts(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One byte per count: exact below 16, else the exponent and a 3-bit mantissa (at most 1/9 below the count).

    The ANS model only needs the probabilities roughly: a byte per histogram entry instead of a two-byte varint
    costs ~0.001 bits per symbol and saves ~1 byte per entry. Returns (codes,
    the counts they stand for); every non-zero count stays non-zero.
    """
    counts = counts.astype(np.int64)
    if counts.size and counts.max() >= 1 << 32:
        raise ValueError("surp stream: a histogram count is too large to quantize.")
    exponent = exp_golomb_buckets(np.maximum(counts, 16))  # floor(log2), at least 4
    mantissa = (counts >> (exponent - 3)) & 7
    codes = np.where(counts < 16, counts, 16 + (exponent - 4) * 8 + mantissa)
    return codes.astype(np.uint8), dequantized_counts(codes)


def dequantized_counts(codes: np.ndarray) -> np.ndarray:
    """The counts that :func:`quantized_counts` codes stand for."""
    codes = codes.astype(np.int64)
    exponent, mantissa = (codes - 16) // 8 + 4, (codes - 16) % 8
    return np.where(codes < 16, codes, np.left_shift(8 + mantissa, np.maximum(exponent - 3, 0))).astype(np.uint32)


def write_histogram(w: BitWriter, counts: np.ndarray) -> np.ndarray:
    """Write an ANS model's histogram; returns the counts the decoder will see (quantized)."""
    codes, model = quantized_counts(counts)
    w.block(codes.tobytes())
    return model


def read_histogram(r: BitReader) -> np.ndarray:
    """A histogram as :func:`write_histogram` wrote it (version 1: exact varints)."""
    if r.version == 1:  # exact counts as varints
        return np.array([r.varint() for _ in range(r.varint())], dtype=np.uint32)
    return dequantized_counts(np.frombuffer(r.block(), dtype=np.uint8))


def pack_variable_bits(values: np.ndarray, widths: np.ndarray) -> bytes:
    """``values[i]`` in ``widths[i]`` bits each, most significant first, packed into bytes."""
    total = int(widths.sum())
    bits = np.zeros(total, dtype=np.uint8)
    starts = np.cumsum(widths) - widths
    for j in range(int(widths.max(initial=0))):
        has = widths > j
        bits[starts[has] + j] = (values[has] >> (widths[has] - 1 - j)) & 1
    return np.packbits(bits).tobytes()


def unpack_variable_bits(data: bytes, widths: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_variable_bits`."""
    total = int(widths.sum())
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    if bits.size < total:
        raise ValueError("surp stream truncated (raw bits).")
    starts = np.cumsum(widths) - widths
    values = np.zeros(widths.size, dtype=np.int64)
    for j in range(int(widths.max(initial=0))):
        has = widths > j
        values[has] = (values[has] << 1) | bits[starts[has] + j]
    return values


def exp_golomb_buckets(values: np.ndarray) -> np.ndarray:
    """``floor(log2 v)`` for integers ``v >= 1``, exact at powers of two."""
    if values.size == 0:
        return np.zeros(0, dtype=np.int64)
    buckets = np.floor(np.log2(values)).astype(np.int64)
    return buckets - (np.left_shift(1, buckets) > values).astype(np.int64)  # float rounding of log2


def histogram_bits(symbols: np.ndarray) -> float:
    """Empirical entropy of ``symbols`` times their number: the ideal size of coding them by their histogram."""
    counts = np.bincount(symbols).astype(np.float64)
    counts = counts[counts > 0]
    return float(-(counts * np.log2(counts / counts.sum())).sum())


def write_exp_golomb(w: BitWriter, values: np.ndarray) -> None:
    """Integers >= 1: bucket floor(log2 v) ANS-coded with its histogram, then the bucket's low bits raw."""
    buckets = exp_golomb_buckets(values)
    w.ans.add(buckets, write_histogram(w, np.bincount(buckets, minlength=1)))
    w.block(pack_variable_bits(values - np.left_shift(1, buckets), buckets))


def read_exp_golomb(r: BitReader, n: int) -> np.ndarray:
    """``n`` values as :func:`write_exp_golomb` wrote them."""
    counts = read_histogram(r)
    buckets = r.symbols(counts, n).astype(np.int64)
    if buckets.size and buckets.min() < 0:
        raise ValueError("surp stream corrupt (negative bucket).")
    return np.left_shift(1, buckets) + unpack_variable_bits(r.block(), buckets)
