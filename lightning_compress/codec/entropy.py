"""Entropy-coding helpers shared by the codecs: ANS (constriction) with categorical models, bit packing."""

from __future__ import annotations

import math
from collections.abc import Sequence

import constriction
import numpy as np

#: Symbols handed to the coder at a time (as int32, which it needs).
_CHUNK = 1 << 20

__all__ = ["AnsStackReader", "AnsStackWriter", "ans_decode", "ans_encode", "leb128", "pack_fixed", "unpack_fixed"]


def _model(counts: np.ndarray) -> object:
    probabilities = np.asarray(counts, dtype=np.float64)
    if probabilities.size < 2:  # constriction needs two symbols; the padding one is never coded
        probabilities = np.append(probabilities, 0.0)
    return constriction.stream.model.Categorical(probabilities / probabilities.sum(), perfect=False)


def ans_encode(symbols: np.ndarray, counts: np.ndarray) -> bytes:
    """ANS-code ``symbols`` (ints in ``[0, len(counts))``) with the i.i.d. categorical model ``counts``.

    Examples:
        >>> import numpy as np
        >>> sym = np.array([0, 1, 1, 2, 1, 1], dtype=np.int32)
        >>> counts = np.bincount(sym, minlength=3)
        >>> ans_decode(ans_encode(sym, counts), counts, 6).tolist()
        [0, 1, 1, 2, 1, 1]
    """
    if symbols.size == 0:
        return b""
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(np.ascontiguousarray(symbols, dtype=np.int32), _model(counts))
    return coder.get_compressed().astype("<u4").tobytes()


def ans_decode(data: bytes, counts: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`ans_encode` (``n`` symbols).

    Raises:
        ValueError: when the data is not a whole number of 32-bit words or does not decode to ``n`` symbols.
    """
    if n == 0:
        return np.zeros(0, dtype=np.int32)
    if len(data) % 4:
        raise ValueError(f"ANS stream of {len(data)} bytes is not a whole number of 32-bit words.")
    words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    try:
        decoder = constriction.stream.stack.AnsCoder(words)
        symbols = np.asarray(decoder.decode(_model(counts), n), dtype=np.int32)
    except Exception as err:  # constriction raises plain exceptions on exhausted/invalid streams
        raise ValueError(f"corrupt ANS stream ({err}).") from err
    if not decoder.is_empty():
        raise ValueError("corrupt ANS stream: data left over after decoding.")
    return symbols


class AnsStackWriter:
    """Several symbol sequences, each with its own categorical model, in one ANS stream.

    One stream pays the coder's final state and word padding once instead of once per sequence (~6 bytes each).
    Sequences are read back in the order they were added (:class:`AnsStackReader`).

    Examples:
        >>> import numpy as np
        >>> writer = AnsStackWriter()
        >>> writer.add(np.array([0, 1, 1]), np.array([1, 2]))
        >>> writer.add(np.array([2, 2, 0, 1]), np.array([1, 1, 2]))
        >>> reader = AnsStackReader(writer.finish())
        >>> reader.take(np.array([1, 2]), 3).tolist(), reader.take(np.array([1, 1, 2]), 4).tolist()
        ([0, 1, 1], [2, 2, 0, 1])
        >>> reader.finish()
    """

    def __init__(self) -> None:
        self._sequences: list[tuple[list[np.ndarray], np.ndarray]] = []

    def add(self, symbols: np.ndarray | Sequence[np.ndarray], counts: np.ndarray) -> None:
        """Queue ``symbols`` (ints in ``[0, len(counts))``, one array or its pieces in order), coded with ``counts``.

        Kept in their own integer type (a byte each for Exp-Golomb buckets), converted for the coder a chunk at a
        time.
        """
        pieces = [symbols] if isinstance(symbols, np.ndarray) else list(symbols)
        pieces = [p if p.dtype.kind in "iu" and p.dtype.itemsize <= 4 else p.astype(np.int32) for p in pieces if p.size]
        if pieces:
            self._sequences.append((pieces, np.asarray(counts)))

    def finish(self) -> bytes:
        """The compressed stream (ANS is last-in first-out: the last sequence is pushed first).

        A sequence is pushed a chunk at a time, the last chunk first: the same pushes as one call on the whole.
        """
        coder = constriction.stream.stack.AnsCoder()
        for pieces, counts in reversed(self._sequences):
            model = _model(counts)
            for symbols in reversed(pieces):
                for start in reversed(range(0, symbols.size, _CHUNK)):
                    chunk = np.ascontiguousarray(symbols[start : start + _CHUNK], dtype=np.int32)
                    coder.encode_reverse(chunk, model)
        return np.asarray(coder.get_compressed(), dtype="<u4").tobytes()


class AnsStackReader:
    """Reads the sequences of an :class:`AnsStackWriter` stream in order.

    Raises:
        ValueError: when the data is not a whole number of 32-bit words, runs out, or has data left at the end.
    """

    def __init__(self, data: bytes) -> None:
        if len(data) % 4:
            raise ValueError(f"ANS stream of {len(data)} bytes is not a whole number of 32-bit words.")
        self._coder = constriction.stream.stack.AnsCoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))

    def take(self, counts: np.ndarray, n: int) -> np.ndarray:
        """The next ``n`` symbols, coded with the model ``counts`` (bytes where the model has at most 256 symbols)."""
        symbols = np.empty(n, dtype=np.uint8 if len(counts) <= 256 else np.int32)  # a byte each where one holds it
        if n == 0:
            return symbols
        model = _model(counts)
        try:
            for start in range(0, n, _CHUNK):
                symbols[start : start + _CHUNK] = self._coder.decode(model, min(_CHUNK, n - start))
        except Exception as err:  # constriction raises plain exceptions on exhausted/invalid streams
            raise ValueError(f"corrupt ANS stream ({err}).") from err
        return symbols

    def finish(self) -> None:
        """Check that every symbol was read."""
        if not self._coder.is_empty():
            raise ValueError("corrupt ANS stream: data left over after decoding.")


def pack_fixed(symbols: np.ndarray, bits: int) -> bytes:
    """Fixed-length code: every symbol in ``bits`` bits, big-endian bit order, zero-padded to a byte."""
    if symbols.size == 0:
        return b""
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    bit_matrix = (symbols.astype(np.int64)[:, None] >> shifts) & 1
    return np.packbits(bit_matrix.astype(np.uint8).reshape(-1)).tobytes()


def unpack_fixed(data: bytes, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack_fixed`.

    Raises:
        ValueError: when ``data`` is not exactly ``n`` symbols long (padded to a byte).
    """
    if len(data) != math.ceil(n * bits / 8):
        raise ValueError(f"fixed-length stream of {len(data)} bytes does not hold {n} symbols of {bits} bits.")
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[: n * bits].reshape(n, bits).astype(np.int64)
    return (flat << np.arange(bits - 1, -1, -1, dtype=np.int64)).sum(axis=1).astype(np.int32)


def leb128(values: np.ndarray | list[int]) -> bytes:
    """Unsigned LEB128 varints (7 bits per byte, high bit = more follows).

    Examples:
        >>> leb128([1, 300]).hex()
        '01ac02'
    """
    out = bytearray()
    for value in np.asarray(values, dtype=np.int64).tolist():
        while True:
            byte = value & 0x7F
            value >>= 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                break
    return bytes(out)
