"""Structure-agnostic weight sharing (Khosrowshahli, Rahnamayan, Ombuki-Berman 2025), as pure functions.

One codebook for the whole network: all selected tensors are concatenated, cut into ``k`` equal-width bins between
their minimum and maximum, empty bins are dropped, and every weight takes the mean of its bin. NSGA-II (pymoo)
searches the integer ``k`` for the Pareto front of (validation error, number of shared values); neighbouring bins
of front solutions are then merged while the validation error does not get worse.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from lightning_compress.functional.selection import select_parameters

__all__ = [
    "Binning",
    "CodebookChoice",
    "SearchBudget",
    "SearchBudgetSpent",
    "SearchPoint",
    "WeightSharingProblem",
    "choose_codebook",
    "entropy_bits",
    "huffman_average_length",
    "kmeans_binning",
    "merge_bins",
    "nsga2_search",
    "pareto_front",
    "replay_merges_",
    "select_parameters",
    "uniform_binning",
    "write_binning",
]

ErrorFn = Callable[[], float]


class SearchBudgetSpent(Exception):
    """The next score would take the search past its budget (caught by :func:`choose_codebook`)."""


@dataclass
class SearchBudget:
    """What the search may spend, in passes over the validation samples ``error_fn`` scores.

    A score on ``error_fn`` costs one pass, one on the screen ``screen_cost`` (its share of the samples).
    :meth:`charge` refuses a score that would pass :attr:`limit` (a phase may lower it for a while, to keep a
    reserve for the next); the unshared model's baseline scores are forced.

    Examples:
        >>> budget = SearchBudget(limit=2.0, screen_cost=0.25)
        >>> budget.charge(full=True); budget.charge(full=False); budget.spent
        1.25
        >>> budget.charge(full=True)
        Traceback (most recent call last):
        ...
        lightning_compress.functional.weight_sharing.SearchBudgetSpent: 2.25 passes > 2
    """

    limit: float
    screen_cost: float = 1.0
    spent: float = 0.0
    total: float = field(init=False)

    def __post_init__(self) -> None:
        self.total = self.limit

    def charge(self, full: bool, force: bool = False) -> None:
        """Count one score (``full``: on ``error_fn``), refusing it when it would pass the limit (unless ``force``)."""
        cost = 1.0 if full else self.screen_cost
        if not force and self.spent + cost > self.limit + 1e-9:
            raise SearchBudgetSpent(f"{self.spent + cost:g} passes > {self.limit:g}")
        self.spent += cost


@dataclass(frozen=True)
class Binning:
    """A shared-value assignment: ``values[i] == codebook[indices[i]]``, codebook sorted ascending.

    Attributes:
        codebook: the shared values, ``(K',)`` float64.
        indices: bin of every weight, ``(N,)`` int32 in ``[0, K')`` (half the bytes of int64, for the whole model).
        sums: sum of the original weights in each bin (so merged means are exact).
        counts: number of weights in each bin (all > 0).
    """

    codebook: torch.Tensor
    indices: torch.Tensor
    sums: torch.Tensor
    counts: torch.Tensor

    @property
    def num_shared(self) -> int:
        """Number of shared values K'."""
        return int(self.codebook.numel())

    def values(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The shared weight of every position."""
        return self.codebook.to(dtype)[self.indices]


#: values binned at a time: the per-value temporaries (float64 copies, int64 bin ids) stay a few MB, whatever the model
CHUNK = 1 << 20


def _binning_from_bins(values: torch.Tensor, bins: torch.Tensor, num_bins: int) -> Binning:
    counts = torch.bincount(bins, minlength=num_bins)
    nonempty = counts > 0
    remap = torch.cumsum(nonempty, 0) - 1  # bins are in value order, so renumbering keeps the order
    indices = remap[bins].to(torch.int32)
    counts = counts[nonempty]
    sums = torch.zeros(int(nonempty.sum()), dtype=torch.float64).index_add_(0, indices, values.double())
    return Binning(codebook=sums / counts, indices=indices, sums=sums, counts=counts)


def uniform_edges(low: float, high: float, k: int) -> torch.Tensor:
    """The ``k`` float64 edges of :func:`uniform_binning` for values in ``[low, high]``: ``linspace(low, high, k)``."""
    if k < 2:
        raise ValueError(f"`k` must be >= 2, got {k}.")
    return torch.linspace(low, high, k, dtype=torch.float64)


def _edges_in(edges: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.dtype]:
    """Edges to compare values of ``dtype`` with, exactly as with the float64 ones, and the dtype to compare in.

    For a float32 value ``v`` and a float64 edge ``e``, ``v >= e`` exactly when ``v >= c``, with ``c`` the smallest
    float32 not below ``e``; so a float32 model is binned without a float64 copy of its values. Other dtypes are
    compared in float64.
    """
    if dtype != torch.float32:
        return edges, torch.float64
    rounded = edges.to(torch.float32)
    below = rounded.double() < edges
    return torch.where(below, torch.nextafter(rounded, torch.full_like(rounded, math.inf)), rounded), dtype


def bin_chunks(values: torch.Tensor, edges: torch.Tensor) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Flat ``values`` in :data:`CHUNK`-sized slices, with the bin of each value: ``(start, chunk, bins)``.

    A value's bin (int64, in ``[0, len(edges))``) is ``j`` with ``edges[j] <= v < edges[j + 1]`` (the last bin:
    ``v >= edges[-1]``).
    """
    compare, dtype = _edges_in(edges, values.dtype)
    compare = compare.to(values.device)
    last = edges.numel() - 1
    for start in range(0, values.numel(), CHUNK):
        chunk = values[start : start + CHUNK].to(dtype)
        yield start, chunk, (torch.bucketize(chunk, compare, right=True) - 1).clamp_(0, last)


def bin_statistics(
    values: torch.Tensor, edges: torch.Tensor, bins_out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per bin of ``edges`` (empty ones included): the float64 sum and the count of ``values``, in chunks.

    ``bins_out`` (as many entries as ``values``, e.g. int32) receives every value's bin, when given.
    """
    k = edges.numel()
    sums = torch.zeros(k, dtype=torch.float64, device=values.device)
    counts = torch.zeros(k, dtype=torch.int64, device=values.device)
    for start, chunk, bins in bin_chunks(values, edges):
        sums.index_add_(0, bins, chunk.double())
        counts += torch.bincount(bins, minlength=k)
        if bins_out is not None:
            bins_out[start : start + bins.numel()] = bins
    return sums.cpu(), counts.cpu()


def uniform_binning(values: torch.Tensor, k: int) -> Binning:
    """Equal-width binning with ``k`` edges from ``min`` to ``max`` (``np.digitize`` semantics), empty bins dropped.

    As in the authors' code, ``k`` edges give ``k - 1`` intervals plus a last bin holding only the maximum.
    O(N log k) with ``torch.bucketize``, in chunks: besides the int32 indices it returns, it needs memory for a
    chunk, not for the model.

    Examples:
        >>> import torch
        >>> b = uniform_binning(torch.tensor([0.0, 0.5, 1.0, 1.5, 4.0]), k=3)  # edges 0, 2, 4
        >>> b.codebook.tolist(), b.indices.tolist()
        ([0.75, 4.0], [0, 0, 0, 0, 1])
    """
    flat = values.detach().reshape(-1).cpu()
    indices = torch.empty(flat.numel(), dtype=torch.int32)
    sums, counts = bin_statistics(flat, uniform_edges(float(flat.min()), float(flat.max()), k), indices)
    nonempty = counts > 0
    remap = (torch.cumsum(nonempty, 0) - 1).to(torch.int32)  # bins are in value order: renumbering keeps the order
    for start in range(0, indices.numel(), CHUNK):
        part = indices[start : start + CHUNK]
        part.copy_(remap[part])
    sums, counts = sums[nonempty], counts[nonempty]
    return Binning(codebook=sums / counts, indices=indices, sums=sums, counts=counts)


@torch.no_grad()
def write_binning(params: Sequence[torch.Tensor], binning: Binning, keep_zeros: Sequence[bool]) -> None:
    """Write a chosen binning into the tensors it was made for, tensor by tensor (no sorted copy of the model).

    ``binning.indices`` runs over the binned entries in order: every entry of a tensor, or only its non-zeros when
    its ``keep_zeros`` is set (those zeros stay exactly zero). The same values as
    :meth:`WeightSharingProblem.write`.

    Examples:
        >>> w = torch.tensor([0.0, 1.0, 0.0, 2.0, 4.0])
        >>> write_binning([w], uniform_binning(torch.tensor([1.0, 2.0, 4.0]), 2), keep_zeros=[True])
        >>> w.tolist()
        [0.0, 1.5, 0.0, 1.5, 4.0]
    """
    codebook = binning.codebook.to(torch.float32)
    offset = 0
    for p, keep in zip(params, keep_zeros, strict=True):
        flat = p.detach().reshape(-1)
        mask = flat != 0 if keep else None
        count = int(mask.sum()) if mask is not None else flat.numel()
        values = codebook[binning.indices[offset : offset + count]].to(p.device, p.dtype)
        if mask is None:
            flat.copy_(values)
        else:
            flat[mask] = values
        offset += count


def _merge_statistics(
    sums: torch.Tensor, counts: torch.Tensor, group: torch.Tensor, i: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bins ``i`` and ``i + 1`` merged in the per-bin sums and counts, and in ``group`` (unmerged bin -> bin)."""
    return (
        torch.cat([sums[:i], sums[i : i + 2].sum().reshape(1), sums[i + 2 :]]),
        torch.cat([counts[:i], counts[i : i + 2].sum().reshape(1), counts[i + 2 :]]),
        group - (group > i).to(group.dtype),
    )


def merge_bins(binning: Binning, i: int) -> Binning:
    """Merge bins ``i`` and ``i + 1``; the merged value is the mean of all their members."""
    if not 0 <= i < binning.num_shared - 1:
        raise ValueError(f"Cannot merge bins {i} and {i + 1} of {binning.num_shared}.")
    sums, counts, indices = _merge_statistics(binning.sums, binning.counts, binning.indices, i)
    return Binning(codebook=sums / counts, indices=indices, sums=sums, counts=counts)


def replay_merges_(binning: Binning, steps: Sequence[int]) -> Binning:
    """:func:`merge_bins` at each of ``steps`` in turn, relabelling ``binning``'s indices once, in place.

    The same binning as the merges one by one (the same sums and counts, so the same codebook), without a new index
    per weight at every step: the steps are composed in a table over the unmerged bins, applied chunk by chunk.

    Examples:
        >>> b = uniform_binning(torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]), k=5)  # one value per bin
        >>> replay_merges_(b, [1, 1]).indices.tolist()  # bins 1, 2, 3 merged
        [0, 1, 1, 1, 2]
    """
    sums, counts = binning.sums, binning.counts
    group = torch.arange(binning.num_shared, dtype=torch.int64)
    for i in steps:
        if not 0 <= i < sums.numel() - 1:
            raise ValueError(f"Cannot merge bins {i} and {i + 1} of {sums.numel()}.")
        sums, counts, group = _merge_statistics(sums, counts, group, i)
    indices = binning.indices
    if len(steps):
        table = group.to(device=indices.device, dtype=indices.dtype)
        for start in range(0, indices.numel(), CHUNK):
            part = indices[start : start + CHUNK]
            part.copy_(table[part])
    return Binning(codebook=sums / counts, indices=indices, sums=sums, counts=counts)


def kmeans_binning(values: torch.Tensor, num_clusters: int, seed: int = 0) -> Binning:
    """1-D k-means codebook (scipy's ``kmeans2``, k-means++ init): the classic weight-sharing baseline."""
    from scipy.cluster.vq import kmeans2

    flat = values.detach().reshape(-1).double()
    centroids, _ = kmeans2(flat.numpy(), num_clusters, minit="++", seed=seed)
    centroids = torch.from_numpy(np.sort(centroids))
    # nearest centroid = bucketize against the midpoints between sorted centroids
    bins = torch.bucketize(flat, (centroids[1:] + centroids[:-1]) / 2)
    return _binning_from_bins(flat, bins, num_clusters)


def entropy_bits(counts: torch.Tensor | Sequence[int]) -> float:
    """Empirical entropy (bits per symbol) of a histogram: the lower bound for coding the indices."""
    c = torch.as_tensor(counts, dtype=torch.float64)
    p = c[c > 0] / c.sum()
    return float(-(p * torch.log2(p)).sum())


def huffman_average_length(counts: torch.Tensor | Sequence[int]) -> float:
    """Average Huffman code length (bits per symbol) of a histogram, the paper's size measure."""
    weights = [int(c) for c in torch.as_tensor(counts).tolist() if int(c) > 0]
    if len(weights) <= 1:
        return 1.0 if weights else 0.0
    heap = list(weights)
    heapq.heapify(heap)
    total_bits = 0  # sum of count * depth = sum of every internal node's weight
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        total_bits += merged
        heapq.heappush(heap, merged)
    return total_bits / sum(weights)


@dataclass(frozen=True)
class SearchPoint:
    """One evaluated solution: ``k`` bins, ``num_shared`` shared values, validation error, whether merged."""

    k: int
    num_shared: int
    error: float
    merged: bool = False


def pareto_front(points: Iterable[SearchPoint]) -> list[SearchPoint]:
    """Non-dominated points (minimise error and number of shared values), sorted by ``num_shared``.

    Of several points with equal objectives the one with the smallest ``k`` is kept.

    Examples:
        >>> pts = [SearchPoint(2, 2, 0.5), SearchPoint(8, 7, 0.1), SearchPoint(9, 7, 0.2), SearchPoint(20, 15, 0.1)]
        >>> [p.k for p in pareto_front(pts)]
        [2, 8]
    """
    best: list[SearchPoint] = []
    for p in sorted(points, key=lambda p: (p.num_shared, p.error, p.k)):
        if not best or p.error < best[-1].error:
            best.append(p)
    return best


class WeightSharingProblem:
    """Writes binnings into a set of parameters and scores them with a user-supplied validation error.

    What does not change between candidates is computed once: the values sorted (a uniform binning's bins are runs
    of them, so its codebook comes from prefix sums in O(k log N)), where each binned entry sits in the parameters,
    and the parameters' layout. A candidate is then scored with one scatter and one forward pass.

    Args:
        params: the tensors sharing one codebook (modified in place while evaluating; restore with :meth:`restore`).
        error_fn: validation error of the model as its parameters currently are (lower is better).
        keep_zeros: per tensor, whether its zeros are a pruned support to keep: then only its non-zeros are binned
            and its zeros stay exactly zero (default: bin every value).
        screen_fn: a cheaper estimate of ``error_fn`` (e.g. on a validation subsample) that the search screens
            candidates with (:meth:`evaluate_k`, :meth:`merge_until_no_improvement`); :meth:`confirm` then scores
            the few that matter with ``error_fn``. ``None``: every score uses ``error_fn``.
        budget: what the scores may spend (:class:`SearchBudget`; ``None``: unbounded).

    Examples:
        >>> w = torch.tensor([0.0, 1.0, 0.0, 2.0, 4.0])
        >>> problem = WeightSharingProblem([w], lambda: 0.0, keep_zeros=[True])
        >>> problem.write(uniform_binning(problem.values, 2))  # bins [1, 4) and {4}: zeros are not binned
        >>> w.tolist()
        [0.0, 1.5, 0.0, 1.5, 4.0]
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        error_fn: ErrorFn,
        keep_zeros: Sequence[bool] | None = None,
        screen_fn: ErrorFn | None = None,
        budget: SearchBudget | None = None,
    ) -> None:
        self.params = list(params)
        self.error_fn = error_fn
        self.screen_fn = screen_fn
        keep = list(keep_zeros) if keep_zeros is not None else [False] * len(self.params)
        if len(keep) != len(self.params):
            raise ValueError(f"`keep_zeros` has {len(keep)} entries for {len(self.params)} tensors.")
        self.masks = [
            (p.detach() != 0).reshape(-1).cpu() if k else torch.ones(p.numel(), dtype=torch.bool)
            for p, k in zip(self.params, keep, strict=True)
        ]
        # the binned values; with the masks they are also the original tensors (restore writes them back): no clone
        dtype = self.params[0].dtype if self.params else torch.float32
        for p in self.params[1:]:
            dtype = torch.promote_types(dtype, p.dtype)
        self.values = torch.empty(sum(int(m.sum()) for m in self.masks), dtype=dtype)
        offset = 0
        for p, m, k in zip(self.params, self.masks, keep, strict=True):
            flat = p.detach().reshape(-1).cpu()
            part = flat[m] if k else flat  # filled in place: a concatenation held the values twice
            self.values[offset : offset + part.numel()] = part
            offset += part.numel()
        # Nothing per value is kept for the search besides these (a sorted copy, its prefix sums and the argsort took
        # 5 model sizes): each candidate bins the values again in chunks (O(N log k), like writing it).
        # the edges of every candidate span these (as uniform_binning's, from the values' own range)
        self._bounds = (float(self.values.min()), float(self.values.max())) if self.values.numel() else (0.0, 0.0)
        mask = torch.cat(self.masks)
        # candidates are written on the parameters' device (no host copy of the model per candidate)
        self.device = self.params[0].device if self.params else torch.device("cpu")
        self._kept = None if bool(mask.all()) else mask.nonzero().reshape(-1).to(self.device)
        self._total = mask.numel()
        #: k -> point scored by the screen (or by ``error_fn`` without one)
        self.cache: dict[int, SearchPoint] = {}
        #: k -> error of the exact ``k``-bin binning under ``error_fn`` (see :meth:`confirm`)
        self.confirmed: dict[int, float] = {}
        self.evaluations = 0
        self.full_evaluations = 0
        #: what the scores may spend (``None``: unbounded)
        self.budget: SearchBudget | None = budget
        #: the phase of :func:`choose_codebook` the budget ended (``None``: it did not)
        self.budget_ended: str | None = None
        #: the last merge run: its unmerged ``k`` and the bin merged at each step taken (see :meth:`merged`)
        self.merge_k = 0
        self.merge_steps: list[int] = []

    @torch.no_grad()
    def _write_kept(self, kept: torch.Tensor) -> None:
        """Write the binned entries' new values (in :attr:`values` order); the other entries stay zero."""
        kept = kept.to(self.device)
        if self._kept is None:
            full = kept
        else:
            full = torch.zeros(self._total, dtype=kept.dtype, device=self.device)
            full[self._kept] = kept
        offset = 0
        for p in self.params:
            p.copy_(full[offset : offset + p.numel()].reshape(p.shape))
            offset += p.numel()

    @torch.no_grad()
    def _write_chunks(self, chunks: Iterable[tuple[int, torch.Tensor]]) -> None:
        """Write the binned entries' new values from ``(start, values)`` slices in :attr:`values` order.

        Without a pruned support every entry is binned, so each slice goes straight into the parameters it covers (no
        new value per weight held at once: one model size less than :meth:`_write_kept` at a candidate's peak).
        """
        flats = [p.detach().view(-1) for p in self.params if p.is_contiguous()]
        if self._kept is not None or len(flats) < len(self.params):
            kept = torch.empty(self.values.numel(), dtype=torch.float32, device=self.device)
            for start, part in chunks:
                kept[start : start + part.numel()] = part
            self._write_kept(kept)
            return
        ends = list(itertools.accumulate(p.numel() for p in self.params))
        for start, part in chunks:
            stop = start + part.numel()
            first = bisect.bisect_right(ends, start)
            for i in range(first, len(self.params)):
                begin = ends[i] - self.params[i].numel()
                if begin >= stop:
                    break
                low, high = max(start, begin), min(stop, ends[i])
                flats[i][low - begin : high - begin].copy_(part[low - start : high - start])

    def write(self, binning: Binning) -> None:
        """Set every (kept) entry to its shared value."""
        self._write_kept(binning.values(torch.float32))

    @torch.no_grad()
    def restore(self) -> None:
        """Put the original (unshared) values back."""
        self._write_kept(self.values)

    @property
    def original(self) -> list[torch.Tensor]:
        """The original (unshared) tensors, rebuilt from the binned values and the masks."""
        out, offset = [], 0
        for p, m in zip(self.params, self.masks, strict=True):
            full = torch.zeros(p.numel(), dtype=p.dtype)
            count = int(m.sum())
            full[m] = self.values[offset : offset + count].to(p.dtype)
            out.append(full.reshape(p.shape))
            offset += count
        return out

    def uniform_codebook(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Codebook and counts of :func:`uniform_binning` with ``k`` edges (no indices kept).

        Examples:
            >>> problem = WeightSharingProblem([torch.tensor([0.0, 0.5, 1.0, 1.5, 4.0])], lambda: 0.0)
            >>> [t.tolist() for t in problem.uniform_codebook(3)]
            [[0.75, 4.0], [4, 1]]
        """
        sums, counts = bin_statistics(self.values, uniform_edges(*self._bounds, k))
        nonempty = counts > 0
        return sums[nonempty] / counts[nonempty], counts[nonempty]

    def _score(self, full: bool) -> float:
        if self.budget is not None:
            self.budget.charge(full or self.screen_fn is None)
        self.evaluations += 1
        if full or self.screen_fn is None:
            self.full_evaluations += 1
            return float(self.error_fn())
        return float(self.screen_fn())

    def error_of(self, binning: Binning, full: bool = False) -> float:
        """Error with ``binning`` applied: the screen's, or ``error_fn``'s with ``full`` (counted in evaluations)."""
        self.write(binning)
        return self._score(full)

    def evaluate_k(self, k: int) -> SearchPoint:
        """Fitness of ``k`` uniform bins (screened when there is a screen), cached per ``k``."""
        if k not in self.cache:
            edges = uniform_edges(*self._bounds, k)
            sums, counts = bin_statistics(self.values, edges)
            # every bin's mean, by its unmerged number (empty bins are never looked up)
            table = (sums / counts.clamp(min=1)).to(torch.float32)
            self._write_chunks((start, table[bins]) for start, _, bins in bin_chunks(self.values, edges))
            self.cache[k] = SearchPoint(k, int((counts > 0).sum()), self._score(full=False))
        return self.cache[k]

    def confirm(self, k: int) -> float:
        """Error of the exact ``k``-bin binning under ``error_fn`` (cached; free when there is no screen)."""
        if k not in self.confirmed:
            if self.screen_fn is None and k in self.cache:
                self.confirmed[k] = self.cache[k].error
            else:
                self.confirmed[k] = self.error_of(uniform_binning(self.values, k), full=True)
        return self.confirmed[k]

    def merge_until_no_improvement(self, k: int) -> tuple[Binning, float]:
        """Greedy merge of neighbouring bins of the ``k``-bin solution while the (screened) error does not increase.

        At position ``i`` both merges (``i-1, i``) and (``i, i+1``) are scored; the best of (left, right, keep) wins,
        ties going to left, then right (a merge that does not hurt is taken). After a merge the same position is
        tried again, otherwise ``i`` advances. The error never rises above the unmerged one. With a screen the
        merges are judged by it; score the result with ``error_of(binning, full=True)``.
        """
        base = uniform_binning(self.values, k)
        best = self.evaluate_k(k).error
        # A merge changes the codebook, not which unmerged bin a weight is in: the run keeps each weight's unmerged
        # bin on the device once and a small table (unmerged bin -> shared value), so a step is a table update and
        # one gather on the device, not a new index per weight built on the host.
        base_on_device = base.indices.to(self.device)
        sums, counts = base.sums, base.counts
        group = torch.arange(base.num_shared)

        def merge(i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return _merge_statistics(sums, counts, group, i)

        def error(merged: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> float:
            table = (merged[0] / merged[1]).to(torch.float32)[merged[2]].to(self.device)
            # the same values as Binning.values() of the merged binning
            self._write_chunks(
                (start, table[base_on_device[start : start + CHUNK]])
                for start in range(0, base_on_device.numel(), CHUNK)
            )
            return self._score(full=False)

        # the steps, not the binnings: each binning holds an index per weight, and a run takes dozens of steps
        self.merge_k, self.merge_steps = k, []
        i = 1
        while i < sums.numel() - 1:
            left, right = merge(i - 1), merge(i)
            try:
                e_left, e_right = error(left), error(right)
            except SearchBudgetSpent:  # the merges so far stand: each one did not raise the error
                self.budget_ended = "merging"
                break
            if e_left <= best and e_left <= e_right:
                (sums, counts, group), best = left, e_left
                self.merge_steps.append(i - 1)
            elif e_right <= best:
                (sums, counts, group), best = right, e_right
                self.merge_steps.append(i)
            else:
                i += 1
        return replay_merges_(base, self.merge_steps), best  # the very binning the steps went through

    def merged(self, steps: int) -> Binning:
        """The binning after the first ``steps`` merges of the last :meth:`merge_until_no_improvement` run.

        Replays them from its unmerged binning, so it is the very binning that run went through.
        """
        return replay_merges_(uniform_binning(self.values, self.merge_k), self.merge_steps[:steps])


def nsga2_search(
    evaluate: Callable[[int], SearchPoint],
    k_bounds: tuple[int, int],
    pop_size: int,
    n_gen: int,
    seed: int,
    on_generation: Callable[[int], None] | None = None,
) -> None:
    """NSGA-II (pymoo) over the integer ``k``; the points are collected by ``evaluate`` (usually a cache).

    Initial population evenly spaced over ``k_bounds`` (the paper's LinearSpacing); SBX crossover and polynomial
    mutation with rounding repair; duplicates eliminated; objectives (error, number of shared values), both minimised.
    """
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.callback import Callback
    from pymoo.core.problem import ElementwiseProblem
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair
    from pymoo.optimize import minimize

    k_min, k_max = k_bounds

    class _Problem(ElementwiseProblem):
        def __init__(self) -> None:
            super().__init__(n_var=1, n_obj=2, xl=k_min, xu=k_max, vtype=int)

        def _evaluate(self, x: np.ndarray, out: dict[str, object], *args: object, **kwargs: object) -> None:
            point = evaluate(round(float(x[0])))
            out["F"] = [point.error, float(point.num_shared)]

    class _Progress(Callback):
        def notify(self, algorithm: object) -> None:
            if on_generation is not None:
                on_generation(int(getattr(algorithm, "n_gen", 0)))

    initial = np.unique(np.linspace(k_min, k_max, pop_size).round()).reshape(-1, 1)
    algorithm = NSGA2(
        pop_size=pop_size,
        sampling=initial,
        crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
        mutation=PM(prob=0.9, eta=20, vtype=float, repair=RoundingRepair()),
        eliminate_duplicates=True,
    )
    minimize(_Problem(), algorithm, ("n_gen", n_gen), seed=seed, verbose=False, callback=_Progress())


#: How far above the budget a screened error may be and still be confirmed (the screen's sampling noise).
SCREEN_SLACK = 0.01


@dataclass
class CodebookChoice:
    """What :func:`choose_codebook` decided, and what it looked at.

    Attributes:
        chosen: the chosen point (its error on ``error_fn``, i.e. all the validation data).
        binning: its binning (merged or uniform).
        baseline_error: the unshared model's error on ``error_fn``.
        screened: every point the exploration scored (on the screen when the problem has one).
        points: the points scored on ``error_fn``: confirmed front solutions and merged ones.
        screen_used: whether the exploration ran on a screen.
        within_budget: whether the chosen point is within the budget (else it is the most accurate one).
        search_ended: the last phase in which the search budget ran out (``"exploring"``, ``"confirming"``,
            ``"merging"``), ``None`` when the search finished within it.
    """

    chosen: SearchPoint
    binning: Binning
    baseline_error: float
    screened: list[SearchPoint]
    points: list[SearchPoint]
    screen_used: bool
    within_budget: bool
    search_ended: str | None = None


def _last_merge_within(
    problem: WeightSharingProblem, merged: Binning, unmerged_error: float, budget: float
) -> tuple[Binning, float]:
    """The most merged binning of the last merge run whose error on all the data is within ``budget``.

    Merges judged on a screen can overshoot on the whole validation data; the error grows along the run, so a
    bisection over its steps finds the last one still within the budget in a few evaluations (the unmerged start is
    within it). ``merged`` is the run's result.
    """
    steps = len(problem.merge_steps)
    if steps == 0:  # no merge was taken
        return merged, unmerged_error
    lo, hi, lo_error = 0, steps, unmerged_error  # after lo steps within the budget, after hi steps not
    try:
        last = problem.error_of(merged, full=True)
        if last <= budget:
            return merged, last
        while hi - lo > 1:
            mid = (lo + hi) // 2
            error = problem.error_of(problem.merged(mid), full=True)
            if error <= budget:
                lo, lo_error = mid, error
            else:
                hi = mid
    except SearchBudgetSpent:  # the search budget ended the bisection: the longest prefix known to be within
        problem.budget_ended = "merging"
    return problem.merged(lo), lo_error


def choose_codebook(
    problem: WeightSharingProblem,
    explore: Callable[[Callable[[int], SearchPoint], int | None], None],
    accuracy_budget: float,
    merge_candidates: int = 3,
    slack: float = SCREEN_SLACK,
    focus_k: int | None = None,
) -> CodebookChoice:
    """Explore ``k``, confirm the front near the budget, merge, and apply the choice rule.

    1. ``explore(problem.evaluate_k, k_max)`` scores candidates (e.g. :func:`nsga2_search`, or every ``k`` of a
       range); ``k_max`` is ``focus_k`` when ``focus_k`` bins are within the budget already (then no larger ``k``
       needs exploring), else ``None`` (the explorer's own bounds);
    2. the front of what it scored (with a screen: every point it scored) is walked from the fewest shared values;
       a solution whose (screened) error is within the budget plus ``slack`` (0 without a screen) is scored on
       ``error_fn`` (:meth:`~WeightSharingProblem.confirm`), until ``max(1, merge_candidates)`` are within the
       budget there;
    3. neighbouring bins of up to ``merge_candidates`` of those are merged (:meth:`~WeightSharingProblem.
       merge_until_no_improvement`), each result scored on ``error_fn``;
    4. the choice: the fewest shared values within ``accuracy_budget`` of the unshared error on ``error_fn`` (if
       none is, the most accurate point).

    The parameters are restored before returning.

    Examples:
        >>> w = torch.linspace(-1, 1, 101)
        >>> problem = WeightSharingProblem([w], lambda: float(w.abs().max() < 0.99))  # needs the extremes kept
        >>> choice = choose_codebook(problem, lambda evaluate, k_max: [evaluate(k) for k in range(2, 12)], 0.0)
        >>> choice.chosen.num_shared <= 3, choice.baseline_error, choice.within_budget
        (True, 0.0, True)
    """
    problem.restore()
    budget = problem.budget
    screen_used = problem.screen_fn is not None
    if budget is not None:  # the unshared model's scores are always paid for
        budget.charge(full=True, force=True)
        if screen_used:
            budget.charge(full=False, force=True)
    baseline_error = float(problem.error_fn())
    baseline_screen = float(problem.screen_fn()) if problem.screen_fn is not None else baseline_error
    slack = slack if screen_used else 0.0
    # under a budget, one confirmed candidate and its merge run: merges save more shared values than a wider front
    wanted = max(1, merge_candidates) if budget is None else 1
    if budget is not None:  # the exploration gets 40% (one candidate at least): the confirmation and merges the rest
        one_candidate = budget.screen_cost if screen_used else 1.0
        budget.limit = max(budget.spent + one_candidate, 0.4 * budget.total)
    try:
        # our design: when ``focus_k`` bins are already within the budget, fewer bins are all the choice rule can
        # want, so the exploration stops there instead of spending most evaluations on k in the hundreds
        focused = focus_k is not None and problem.evaluate_k(focus_k).error <= baseline_screen + accuracy_budget + slack
        explore(problem.evaluate_k, focus_k if focused else None)
    except SearchBudgetSpent:
        problem.budget_ended = "exploring"
    if budget is not None:
        budget.limit = budget.total
    screened = list(problem.cache.values())
    budget_error = baseline_error + accuracy_budget
    confirmed: list[SearchPoint] = []
    # Without a screen the front is exact; with one, a point the screen shows dominated may be the better one on
    # all the data, so every screened point near the budget is a candidate, fewest shared values first.
    candidates = sorted(screened, key=lambda p: (p.num_shared, p.error)) if screen_used else pareto_front(screened)
    try:
        for point in candidates:
            if point.error > baseline_screen + accuracy_budget + slack:
                continue
            confirmed.append(SearchPoint(point.k, point.num_shared, problem.confirm(point.k)))
            if sum(c.error <= budget_error for c in confirmed) >= wanted:
                break
        if not any(c.error <= budget_error for c in confirmed) and screened:  # the fallback: the most accurate
            best = min(screened, key=lambda p: (p.error, p.num_shared))
            confirmed.append(SearchPoint(best.k, best.num_shared, problem.confirm(best.k)))
    except SearchBudgetSpent:
        problem.budget_ended = "confirming"
    if not confirmed:  # nothing could be confirmed within the budget: the most accurate screened point, as screened
        if not screened:
            problem.restore()  # the refused candidate may be written into the parameters
            raise SearchBudgetSpent("the search budget ended before any candidate was scored")
        confirmed.append(min(screened, key=lambda p: (p.error, p.num_shared)))
    points = list(dict.fromkeys(confirmed))
    merged: dict[int, Binning] = {}
    within_budget = sorted((c for c in points if c.error <= budget_error), key=lambda c: c.num_shared)
    for point in within_budget[:merge_candidates]:
        if problem.budget_ended in ("confirming", "merging"):
            break
        if budget is not None:  # a merge run leaves 3 passes to find its longest prefix within the budget on all data
            budget.limit = max(budget.spent, budget.total - 3)
        binning, error = problem.merge_until_no_improvement(point.k)
        if budget is not None:
            budget.limit = budget.total
        if screen_used:  # the merges were judged on the screen: score the result on all the data
            binning, error = _last_merge_within(problem, binning, point.error, budget_error)
        merged[point.k] = binning
        points.append(SearchPoint(point.k, binning.num_shared, error, merged=True))
    problem.restore()
    within = [p for p in points if p.error <= budget_error]
    if within:
        chosen = min(within, key=lambda p: (p.num_shared, p.error, p.merged))
    else:
        chosen = min(points, key=lambda p: (p.error, p.num_shared))
    binning = merged[chosen.k] if chosen.merged else uniform_binning(problem.values, chosen.k)
    return CodebookChoice(
        chosen, binning, baseline_error, screened, points, screen_used, bool(within), problem.budget_ended
    )
