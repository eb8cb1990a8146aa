"""The symbols of a version-2 SuRP stream, walked from a refinement's rounds and back, a piece at a time.

:mod:`~lightning_compress.codec.surp` writes and reads the stream; this module turns the rounds (the positions each
round picked) into what version 2 codes (each non-zero's first round, the refinements' ranks among the support, the
support's gaps per tensor, the signs) and the support and first rounds back into rounds. Both walks hold a byte or
four per position and a piece's temporaries (:data:`_PIECE` positions), not eight-byte indices of the whole support
per round: on ResNet-50's weights at 80% kept (``bench.surp_stream_cost``) coding takes 1.8 s instead of 10.6 s
and parsing 3.6 s instead of 21.9 s, allocating 1.4 and 2.2 model sizes at the most instead of 8.6 and 8.4.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from lightning_compress.codec.bits import BitReader, ExpGolombParts, read_exp_golomb
from lightning_compress.functional.successive_pruning import SurpResult

__all__ = [
    "OWN_CONTEXT_MIN",
    "StreamSymbols",
    "label_type",
    "read_segmented_support",
    "rounds_from_labels",
    "stream_symbols",
]

#: A tensor with at least this many non-zeros codes its support gaps with its own model (version 2).
OWN_CONTEXT_MIN = 1000

#: Positions (or support entries) counted through at a time when ranking a round's refinements among the support.
_PIECE = 1 << 18


def _segment_contexts(segment_counts: np.ndarray) -> np.ndarray:
    """Gap-model id per segment: 0 shared by the small segments, 1, 2, ... one each for the large ones."""
    own = segment_counts >= OWN_CONTEXT_MIN
    return np.where(own, np.cumsum(own), 0)


def _position_type(n: int) -> type[np.signedinteger]:
    """Positions of a vector of ``n`` as 4-byte integers where they fit (half the memory of NumPy's default)."""
    return np.int32 if n < 2**31 else np.int64


def read_segmented_support(r: BitReader, segments: list[int], segment_counts: np.ndarray) -> np.ndarray:
    """Every non-zero position, ascending: each gap model's gaps, read into its segments' places in the support."""
    contexts = _segment_contexts(segment_counts)
    bounds = np.cumsum([0, *segments])
    slots = np.cumsum([0, *segment_counts.tolist()])
    support = np.empty(int(slots[-1]), dtype=_position_type(int(bounds[-1])))
    for context in range(int(contexts.max(initial=0)) + 1):
        members = np.flatnonzero(contexts == context)
        total = int(segment_counts[members].sum())
        if total == 0:
            continue
        gaps = read_exp_golomb(r, total, support.dtype.type)
        offset = 0
        for i in members.tolist():
            count = int(segment_counts[i])
            local = gaps[offset : offset + count]
            offset += count
            if count and int(local.sum(dtype=np.int64)) > segments[i]:  # the last position, plus one, past the end
                raise ValueError("surp stream corrupt (position outside its tensor).")
            np.cumsum(local, out=local)
            local += int(bounds[i]) - 1
            support[int(slots[i]) : int(slots[i]) + count] = local
    return support


def rounds_from_labels(
    support: np.ndarray, labels: np.ndarray, refine_counts: np.ndarray, refine_gaps: np.ndarray
) -> list[np.ndarray]:
    """Every round's positions, ascending, from the support's labels and the refinements' ranks.

    A round's positions are the support labelled with it and its refinements (ranks among the support labelled
    before it); the support is walked a piece of :data:`_PIECE` entries at a time. Memory: the rounds' positions
    (4 bytes a pick) beside the support, where the support selected per round as 8-byte indices took 8.4 model sizes
    on ResNet-50 (and a pass over the whole support per round).
    """
    n_rounds = refine_counts.size
    lows = range(0, support.size, _PIECE)
    counts = np.zeros((len(lows), n_rounds), dtype=np.int64)  # per piece: its entries labelled with each round
    for k, low in enumerate(lows):
        counts[k] = np.bincount(labels[low : low + _PIECE], minlength=n_rounds)
    earlier = np.zeros(len(lows), dtype=np.int64)  # per piece: its entries labelled before the round
    rounds, used = [], 0
    for r, refined in enumerate(refine_counts.tolist()):
        parts = []
        if refined:
            ranks = np.cumsum(refine_gaps[used : used + refined]) - 1
            used += refined
            ends = np.cumsum(earlier)
            if not ends.size or ranks[-1] >= ends[-1]:
                raise ValueError("surp stream corrupt (refinement outside the support).")
            piece_of = np.searchsorted(ends, ranks, side="right")
            starts = np.flatnonzero(np.diff(piece_of, prepend=-1))
            for start, end in zip(starts.tolist(), [*starts[1:].tolist(), ranks.size], strict=True):
                k = int(piece_of[start])
                low = k * _PIECE
                within = np.flatnonzero(labels[low : low + _PIECE] < r)
                parts.append(support[low + within[ranks[start:end] - (ends[k] - earlier[k])]])
        for k in np.flatnonzero(counts[:, r]).tolist():
            low = k * _PIECE
            parts.append(support[low : low + _PIECE][labels[low : low + _PIECE] == r])
        earlier += counts[:, r]
        rounds.append(np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=support.dtype))
    return rounds


@dataclass
class StreamSymbols:
    """What a version-2 stream codes, built in one walk over the rounds (:func:`stream_symbols`)."""

    refine_counts: np.ndarray  # refinement picks per round
    label_counts: np.ndarray  # new positions per round
    segment_counts: np.ndarray  # non-zeros per segment
    context_gaps: list[ExpGolombParts]  # per gap model: the support's gaps within each of its segments
    labels: np.ndarray  # each non-zero's first round, in position order
    refine_gaps: ExpGolombParts  # refinement picks as gaps among the support at their round's start
    negative: np.ndarray | None  # each non-zero's sign bit (1: negative), in position order; None without signs


def label_type(rounds: int) -> type[np.unsignedinteger]:
    """The smallest unsigned type that holds every round's number and one more value (off the support)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if rounds < np.iinfo(dtype).max:
            return dtype
    raise ValueError(f"surp stream: {rounds} rounds are too many to code.")


def _ranks(label: np.ndarray, off: int, old: np.ndarray, per_piece: np.ndarray) -> np.ndarray:
    """How many support positions (``label != off``) precede each of the ascending support positions ``old``.

    ``per_piece`` counts the support positions in each piece of :data:`_PIECE` positions; only the pieces that hold
    a position of ``old`` are counted through (a piece's memory at a time, not the support's as 8-byte indices).
    """
    before = np.cumsum(per_piece) - per_piece
    piece_of = old // _PIECE
    starts = np.flatnonzero(np.diff(piece_of, prepend=-1))
    ends = np.append(starts[1:], old.size)
    ranks = np.empty(old.size, dtype=np.int64)
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        piece = int(piece_of[start])
        low = piece * _PIECE
        counted = np.cumsum(label[low : low + _PIECE] != off, dtype=np.int32)
        ranks[start:end] = before[piece] + counted[old[start:end] - low] - 1
    return ranks


def stream_symbols(result: SurpResult, segments: list[int], signs: np.ndarray | None) -> StreamSymbols:
    """One walk over the rounds: each position's first round and the refinements' ranks; then the support per segment.

    Memory: one label per position (a byte while the rounds are fewer than 255), a byte per coded symbol and the raw
    bits, where ranking every round against a support of 8-byte indices took 8.6 model sizes on ResNet-50.
    """
    n, rounds = result.n, result.rounds
    labels_of = label_type(len(rounds))
    off = int(np.iinfo(labels_of).max)
    label = np.full(n, off, dtype=labels_of)
    per_piece = np.zeros(-(-n // _PIECE), dtype=np.int64)
    refine_counts = np.zeros(len(rounds), dtype=np.int64)
    label_counts = np.zeros(len(rounds), dtype=np.int64)
    refine_gaps = ExpGolombParts()
    for r, positions in enumerate(rounds):
        is_old = label[positions] != off
        old, new = positions[is_old], positions[~is_old]
        if old.size:
            refine_gaps.add(np.diff(_ranks(label, off, old, per_piece), prepend=-1))
        label[new] = r
        per_piece += np.bincount(new // _PIECE, minlength=per_piece.size)
        refine_counts[r], label_counts[r] = old.size, new.size
    bounds = np.cumsum([0, *segments])
    segment_counts = np.array(
        [int(np.count_nonzero(label[lo:hi] != off)) for lo, hi in itertools.pairwise(bounds.tolist())],
        dtype=np.int64,
    )
    contexts = _segment_contexts(segment_counts)
    context_gaps = [ExpGolombParts() for _ in range(int(contexts.max(initial=0)) + 1)]
    labels = np.empty(int(segment_counts.sum()), dtype=labels_of)  # filled in position order, no second copy
    negative = None if signs is None else np.empty(labels.size, dtype=bool)
    filled = 0
    for i, context in enumerate(contexts.tolist()):
        previous = -1  # the segment's last support position so far (local)
        for low in range(int(bounds[i]), int(bounds[i + 1]), _PIECE):
            high = min(low + _PIECE, int(bounds[i + 1]))
            kept = label[low:high] != off
            local = np.flatnonzero(kept) + (low - int(bounds[i]))
            if local.size:
                context_gaps[context].add(np.diff(local, prepend=previous))
                previous = int(local[-1])
            labels[filled : filled + local.size] = label[low:high][kept]
            if negative is not None and signs is not None:
                negative[filled : filled + local.size] = signs[low:high][kept] < 0
            filled += local.size
    return StreamSymbols(
        refine_counts=refine_counts,
        label_counts=label_counts,
        segment_counts=segment_counts,
        context_gaps=context_gaps,
        labels=labels,
        refine_gaps=refine_gaps,
        negative=negative,
    )
