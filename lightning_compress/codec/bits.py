"""Bit-level primitives the entropy-coded codecs share: writers, readers, Exp-Golomb codes, histograms, bit packing.

Gaps and counts (``>= 1``) are coded as an Exp-Golomb split: the bucket ``floor(log2 g)`` ANS-coded with its
histogram (one byte per entry, log-quantized), the ``bucket`` low bits raw.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from lightning_compress.codec.entropy import AnsStackReader, AnsStackWriter, ans_decode, leb128

#: Values converted at a time (bit packing, Exp-Golomb buckets, ANS coding): the temporaries of a chunk, not of a
#: whole sequence, which for a refinement of a large network can hold tens of millions of values.
CHUNK = 1 << 20

#: The stream version a reader assumes (version 1 of the SuRP stream wrote exact histograms as varints).
LATEST_VERSION = 2

__all__ = [
    "CHUNK",
    "LATEST_VERSION",
    "BitPacker",
    "BitReader",
    "BitWriter",
    "ExpGolombParts",
    "counts_bits",
    "dequantized_counts",
    "exp_golomb_buckets",
    "exp_golomb_entropy",
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


def _variable_bits(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """``values[i]`` in ``widths[i]`` bits each, most significant first: one byte (0 or 1) per bit."""
    bits = np.zeros(int(widths.sum()), dtype=np.uint8)
    starts = np.cumsum(widths) - widths
    for j in range(int(widths.max(initial=0))):
        has = widths > j
        bits[starts[has] + j] = (values[has] >> (widths[has] - 1 - j)) & 1
    return bits


class BitPacker:
    """Raw bits packed into bytes as they come, chunk by chunk: memory of a chunk, not of the whole sequence.

    Examples:
        >>> packer = BitPacker()
        >>> packer.add(np.array([1, 0, 1]), np.array([1, 1, 1]))
        >>> packer.add(np.array([5]), np.array([3]))
        >>> packer.finish() == pack_variable_bits(np.array([1, 0, 1, 5]), np.array([1, 1, 1, 3]))
        True
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._carry = np.zeros(0, dtype=np.uint8)  # the bits after the last whole byte

    def add(self, values: np.ndarray, widths: np.ndarray) -> None:
        """Append ``values[i]`` in ``widths[i]`` bits each."""
        for start in range(0, values.size, CHUNK):
            bits = _variable_bits(values[start : start + CHUNK], widths[start : start + CHUNK])
            if self._carry.size:
                bits = np.concatenate([self._carry, bits])
            whole = bits.size - bits.size % 8
            self._parts.append(np.packbits(bits[:whole]).tobytes())
            self._carry = bits[whole:]

    def finish(self) -> bytes:
        """Every bit added, zero-padded to a byte."""
        return b"".join(self._parts) + np.packbits(self._carry).tobytes()


def pack_variable_bits(values: np.ndarray, widths: np.ndarray) -> bytes:
    """``values[i]`` in ``widths[i]`` bits each, most significant first, packed into bytes."""
    packer = BitPacker()
    packer.add(values, widths)
    return packer.finish()


def _unpacked_chunks(data: bytes, widths: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """What :func:`pack_variable_bits` packed, a chunk of values at a time: (first index, values as int64)."""
    if 8 * len(data) < int(widths.sum()):
        raise ValueError("surp stream truncated (raw bits).")
    raw = np.frombuffer(data, dtype=np.uint8)
    first_bit = 0
    for start in range(0, widths.size, CHUNK):
        chunk = widths[start : start + CHUNK].astype(np.int64)
        end_bit = first_bit + int(chunk.sum())
        bits = np.unpackbits(raw[first_bit // 8 : -(-end_bit // 8)])
        starts = np.cumsum(chunk) - chunk + (first_bit % 8)
        values = np.zeros(chunk.size, dtype=np.int64)
        for j in range(int(chunk.max(initial=0))):
            has = chunk > j
            values[has] = (values[has] << 1) | bits[starts[has] + j]
        yield start, values
        first_bit = end_bit


def unpack_variable_bits(data: bytes, widths: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_variable_bits`."""
    values = np.zeros(widths.size, dtype=np.int64)
    for start, chunk in _unpacked_chunks(data, widths):
        values[start : start + chunk.size] = chunk
    return values


def exp_golomb_buckets(values: np.ndarray) -> np.ndarray:
    """``floor(log2 v)`` for integers ``v >= 1``, exact at powers of two."""
    if values.size == 0:
        return np.zeros(0, dtype=np.int64)
    buckets = np.floor(np.log2(values)).astype(np.int64)
    return buckets - (np.left_shift(1, buckets) > values).astype(np.int64)  # float rounding of log2


def histogram_bits(symbols: np.ndarray) -> float:
    """Empirical entropy of ``symbols`` times their number: the ideal size of coding them by their histogram."""
    return counts_bits(np.bincount(symbols))


def counts_bits(counts: np.ndarray) -> float:
    """The ideal size of symbols coded by their histogram ``counts``: ``-sum(c * log2(c / N))``."""
    nonzero = counts[counts > 0].astype(np.float64)
    return float(-(nonzero * np.log2(nonzero / nonzero.sum())).sum())


class ExpGolombParts:
    """An Exp-Golomb sequence built chunk by chunk: one byte per value (its bucket) and its raw bits, packed.

    Writing it (:meth:`write`) gives the bytes of :func:`write_exp_golomb` on the whole sequence; building it holds
    a chunk's temporaries at a time, not eight bytes per value several times over.

    Examples:
        >>> parts = ExpGolombParts()
        >>> parts.add(np.array([1, 5])); parts.add(np.array([2]))
        >>> a, b = BitWriter(), BitWriter()
        >>> parts.write(a); write_exp_golomb(b, np.array([1, 5, 2]))
        >>> a.parts == b.parts, parts.count, parts.entropy_bits() == exp_golomb_entropy(np.array([1, 5, 2]))
        (True, 3, True)
    """

    def __init__(self) -> None:
        self._buckets: list[np.ndarray] = []
        self._raw = BitPacker()
        self._histogram = np.zeros(64, dtype=np.int64)
        self.count = 0

    def add(self, values: np.ndarray) -> None:
        """Append integers ``>= 1``."""
        for start in range(0, values.size, CHUNK):
            chunk = values[start : start + CHUNK]
            buckets = exp_golomb_buckets(chunk)
            self._buckets.append(buckets.astype(np.uint8))
            self._histogram += np.bincount(buckets, minlength=64)
            self._raw.add(chunk - np.left_shift(1, buckets), buckets)
            self.count += chunk.size

    def histogram(self) -> np.ndarray:
        """The buckets' counts (as ``np.bincount(buckets, minlength=1)``)."""
        used = np.flatnonzero(self._histogram)
        return self._histogram[: int(used[-1]) + 1 if used.size else 1]

    def entropy_bits(self) -> float:
        """The ideal size: the buckets by their histogram, their raw bits as they are."""
        return _exp_golomb_bits(self.histogram())

    def write(self, w: BitWriter) -> None:
        """Write the sequence as :func:`write_exp_golomb` does."""
        w.ans.add(self._buckets, write_histogram(w, self.histogram()))
        w.block(self._raw.finish())


def write_exp_golomb(w: BitWriter, values: np.ndarray) -> None:
    """Integers >= 1: bucket floor(log2 v) ANS-coded with its histogram, then the bucket's low bits raw."""
    parts = ExpGolombParts()
    parts.add(values)
    parts.write(w)


def exp_golomb_entropy(values: np.ndarray) -> float:
    """The ideal size of :func:`write_exp_golomb`'s symbols: buckets by their histogram, raw bits as they are."""
    if values.size == 0:
        return 0.0
    return _exp_golomb_bits(np.bincount(exp_golomb_buckets(values)))


def _exp_golomb_bits(histogram: np.ndarray) -> float:
    """Exp-Golomb symbols' ideal size from their buckets' histogram: buckets by it, ``b`` raw bits in bucket ``b``."""
    return counts_bits(histogram) + float((histogram * np.arange(histogram.size)).sum())


def read_exp_golomb(r: BitReader, n: int, dtype: type[np.signedinteger] = np.int64) -> np.ndarray:
    """``n`` values as :func:`write_exp_golomb` wrote them, as ``dtype`` (decoded a chunk at a time).

    Raises:
        ValueError: when a value does not fit ``dtype`` or the stream is corrupt.
    """
    counts = read_histogram(r)
    buckets = r.symbols(counts, n)
    if buckets.size and (buckets.min() < 0 or buckets.max() > 62):
        raise ValueError("surp stream corrupt (bucket out of range).")
    values = np.empty(n, dtype=dtype)
    limit = np.iinfo(dtype).max
    for start, chunk in _unpacked_chunks(r.block(), buckets):
        chunk += np.left_shift(np.int64(1), buckets[start : start + chunk.size])
        if chunk.size and int(chunk.max()) > limit:
            raise ValueError("surp stream corrupt (value out of range).")
        values[start : start + chunk.size] = chunk
    return values
