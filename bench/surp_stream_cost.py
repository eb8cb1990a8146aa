"""What SuccessivePruning's final stream costs on ResNet-50's weights, phase by phase: seconds and peak memory.

ResNet-50's weight tensors (torchvision's initialisation, 23.7M values, seed 0) refined to a sparsity (default 0.2:
the final stream of a fit whose guard stopped at 20%, the largest stream and the worst case for the stage), then
each phase of the final stage and of saving alone, in this process: the refinement (``refine``), the stream
(``encode_stream``), its statistics (``stream_statistics``), parsing it (``parse_stream``, what a save's check and
``lc.load`` run) and a trial of the file's size (``trial_bytes`` with the ``surp`` codecs); first, a guarded
stage's support at that sparsity (``largest_support``, on the weights before refining). For each phase: its
seconds, the process's peak resident set during it above the set before it, and the most the C library's
allocator held (``mallinfo2``: the bytes in use, without the freed pages a resident set keeps), in fp32 model
sizes. Uses only public functions, so the same script runs on an earlier commit for a before/after.

Run: ``python -m bench.surp_stream_cost [--sparsity 0.2] [--name surp_stream_cost]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torchvision

from bench.common import PeakAllocated, PeakRss, write_results
from lightning_compress.callbacks.memory import release_freed_memory
from lightning_compress.codec.base import CodecSpec
from lightning_compress.codec.surp import encode_stream, parse_stream, stream_statistics
from lightning_compress.functional.successive_pruning import largest_support, magnitudes, refine
from lightning_compress.saving import trial_bytes

NAME = "surp_stream_cost"


def phase(label: str, run: Callable[[], Any], model_bytes: int, rows: list[dict[str, Any]]) -> Any:
    """Run one phase; record its seconds and peaks above what was held before it."""
    release_freed_memory()
    rss_before, held_before = PeakRss.now(), PeakAllocated.now()
    with PeakAllocated() as heap, PeakRss() as rss:
        started = time.perf_counter()
        out = run()
        seconds = time.perf_counter() - started
    rows.append(
        {
            "phase": label,
            "seconds": round(seconds, 2),
            "peak RSS above before (model sizes)": f"+{(rss.peak - rss_before) / model_bytes:.2f}",
            "peak allocated above before (model sizes)": f"+{(heap.peak - held_before) / model_bytes:.2f}",
        }
    )
    print(rows[-1], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sparsity", type=float, default=0.2)
    parser.add_argument("--name", default=NAME)
    parser.add_argument("--commit", default="", help="the commit measured, for the notes (default: this tree)")
    args = parser.parse_args()
    torch.manual_seed(0)
    net = torchvision.models.resnet50(num_classes=100)
    named = [(n, p) for n, p in net.named_parameters() if p.dim() > 1]
    params = [p.detach() for _, p in named]
    n = sum(p.numel() for p in params)
    model_bytes = 4 * n
    rows: list[dict[str, Any]] = []
    with torch.no_grad():
        # a guarded stage's support (before any refinement): the largest magnitudes, as masks
        phase("largest_support", lambda: largest_support(params, args.sparsity), model_bytes, rows)
        u, norms = magnitudes(params)
        held = {"u": u}  # the refinement takes the only reference: it overwrites the magnitudes with its residual
        del u
        result = phase(
            "refine",
            lambda: refine(held.pop("u"), target_sparsity=args.sparsity, overwrite=True, record_rounds=True),
            model_bytes,
            rows,
        )
        recon = torch.as_tensor(result.recon)
        offset = 0
        for p, norm in zip(params, norms, strict=True):  # the weights the stream stands for
            k = p.numel()
            p.copy_(p.sign().to(torch.float64).mul_(recon[offset : offset + k].reshape(p.shape)).mul_(norm))
            offset += k
        del recon
        result.recon = None
        signs = torch.cat([p.reshape(-1).sign().to(torch.int8) for p in params]).numpy()
        segments = [p.numel() for p in params]
        stream = phase("encode_stream", lambda: encode_stream(result, signs, segments), model_bytes, rows)
        statistics = phase("stream_statistics", lambda: stream_statistics(result, stream), model_bytes, rows)
        phase("parse_stream", lambda: parse_stream(stream), model_bytes, rows)
        codecs, offset = {}, 0
        for (name, p), norm in zip(named, norms, strict=True):
            codecs[name] = CodecSpec("surp", {"stream": stream, "offset": offset, "numel": p.numel(), "norm": norm})
            offset += p.numel()
        size = phase("trial_bytes (save, checked)", lambda: trial_bytes(net, codecs), model_bytes, rows)
    figures = {
        "params": n,
        "sparsity": args.sparsity,
        "rounds": len(result.rounds),
        "picks": statistics.picks,
        "nonzeros": statistics.nonzeros,
        "stream_bytes": len(stream),
        "artifact_bytes": size,
    }
    notes = (
        f"`python -m bench.surp_stream_cost {' '.join(sys.argv[1:])}`"
        + (f" on commit {args.commit}" if args.commit else "")
        + f": ResNet-50's {n:,} weights (torchvision's initialisation, seed 0) refined to sparsity {args.sparsity} "
        f"({len(result.rounds)} rounds, {statistics.picks:,} picks, {statistics.nonzeros:,} non-zeros), a stream of "
        f"{len(stream):,} bytes, an artifact of {size:,}. Each phase alone in this process: its seconds, the peak "
        "resident set above the set before it, and the most the allocator held (mallinfo2) above what it held before "
        "it, in fp32 model sizes (the phases after the refinement hold its rounds, 4 bytes a pick)."
    )
    write_results(args.name, {"figures": figures, "rows": rows}, rows, notes)


if __name__ == "__main__":
    main()
