"""Where a fit's memory goes: the bytes malloc holds, sampled every 5 ms, between the hooks and events of one fit.

One ``bench.scale`` configuration fits in this process while a thread samples ``mallinfo2`` (the bytes the C
allocator has handed out and not taken back: tensors, NumPy arrays, library buffers; not the pages it keeps free, so
a lower and steadier figure than the resident set) or, with ``--rss``, the resident set. Every training-step hook and
every compression event (``@compression_event``, seen through its ``torch.profiler.record_function`` label) is marked;
the printout is one line per interval between two marks: the bytes at its start and the most inside it. Comparing a
configuration with ``dense`` shows what a callback holds between steps and what its events add.

Run: ``python -m bench.memory_timeline NET CONFIG [--steps 8] [--batch 16] [--rss]``, e.g.
``python -m bench.memory_timeline resnet18 dense`` then ``... resnet18 "NeuronElimination(target_params=0.5)"``.
Linux with glibc only (``mallinfo2``). Nothing is written to ``bench/results``: the figures are read, not tabled.
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

import lightning.pytorch as pl
import torch

import bench.scale as scale
from bench.common import PeakRss, allocated_bytes
from lightning_compress.callbacks.memory import release_freed_memory


class Timeline:
    """Samples of (time, label, bytes) and marks of (time, what, bytes)."""

    def __init__(self, rss: bool) -> None:
        self.rss = rss
        self.label = "step"
        self.samples: list[tuple[float, str, int]] = []
        self.marks: list[tuple[float, str, int]] = []

    def now(self) -> int:
        return PeakRss.now() if self.rss else allocated_bytes()

    def mark(self, what: str) -> None:
        self.marks.append((time.perf_counter(), what, self.now()))

    def sample(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.samples.append((time.perf_counter(), self.label, self.now()))
            time.sleep(0.005)


class PhasePeaks:
    """The most malloc held since the last :meth:`report` (a sampling thread)."""

    def __init__(self) -> None:
        self._timeline = Timeline(rss=False)
        self.most = self._timeline.now()
        self._lock = threading.Lock()  # a sample taken before a reset must not land after it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._started = time.perf_counter()

    def _sample(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self.most = max(self.most, self._timeline.now())
            time.sleep(0.003)

    def report(self, phase: str) -> None:
        mb = 2**20
        with self._lock:
            now = self._timeline.now()
            most = max(self.most, now)
        print(
            f"{phase:30s} held {now / mb:8.0f} MB   most inside {most / mb:8.0f} MB   "
            f"{time.perf_counter() - self._started:7.1f} s",
            flush=True,
        )
        release_freed_memory()
        with self._lock:
            self.most = self._timeline.now()
        self._started = time.perf_counter()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _label_events(timeline: Timeline) -> None:
    """Mark every ``lc/...`` profiler range (the compression events) and label the samples inside it."""
    original = torch.profiler.record_function

    class Labelled:
        def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
            self.name, self.inner = name, original(name, *args, **kwargs)

        def __enter__(self) -> Any:
            self.previous = timeline.label
            if self.name.startswith("lc/"):
                timeline.label = self.name
                timeline.mark("enter " + self.name)
            return self.inner.__enter__()

        def __exit__(self, *exc: object) -> Any:
            out = self.inner.__exit__(*exc)
            if self.name.startswith("lc/"):
                timeline.mark("exit " + self.name)
                timeline.label = self.previous
            return out

    torch.profiler.record_function = Labelled  # type: ignore[misc, assignment]


def _marker(timeline: Timeline) -> pl.Callback:
    hooks = ["on_fit_start", "on_train_start", "on_train_batch_start", "on_before_backward", "on_after_backward"]
    hooks += ["on_train_batch_end", "on_validation_start", "on_validation_end", "on_train_end", "on_fit_end"]

    def make(hook: str) -> Any:
        return lambda self, *args, **kwargs: timeline.mark(hook)

    return type("Marks", (pl.Callback,), {hook: make(hook) for hook in hooks})()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("net", choices=sorted(scale.NETS))
    parser.add_argument("config", choices=sorted(scale.CONFIGS))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--val-images", type=int, default=32)
    parser.add_argument("--rss", action="store_true", help="sample the resident set instead of malloc's bytes")
    args = parser.parse_args()
    timeline = Timeline(args.rss)
    _label_events(timeline)
    make_callbacks = scale.CONFIGS[args.config]
    scale.CONFIGS[args.config] = lambda: [_marker(timeline), *make_callbacks()]
    stop = threading.Event()
    sampler = threading.Thread(target=timeline.sample, args=(stop,), daemon=True)
    sampler.start()
    started = time.perf_counter()
    result = scale.run_one(args.net, args.config, args.steps, args.batch, args.val_images, "cpu")
    stop.set()
    sampler.join()
    mb = 2**20
    most = max(s[2] for s in timeline.samples) / mb
    print(f"{args.net} {args.config}: model {result['model_mb']:.1f} MB, most {most:.0f} MB")
    for (t0, what, at), (t1, _, _) in zip(timeline.marks, timeline.marks[1:], strict=False):
        inside = [s[2] for s in timeline.samples if t0 <= s[0] < t1]
        print(f"{t0 - started:8.2f}s {what:48s} {at / mb:7.0f} MB  most {max(inside, default=at) / mb:7.0f} MB")


if __name__ == "__main__":
    main()
