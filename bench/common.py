"""Shared helpers of the benchmarks: compose a recipe like ``lcompress`` does, write JSON + markdown results."""

from __future__ import annotations

import ctypes
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

RESULTS = Path(__file__).parent / "results"


@contextmanager
def composed(recipe: str, overrides: Sequence[str] = ()) -> Iterator[DictConfig]:
    """The config ``lcompress recipe=<recipe> <overrides>`` would run, writing into a temporary output dir."""
    GlobalHydra.instance().clear()
    with tempfile.TemporaryDirectory() as out:
        with initialize_config_module(version_base="1.3", config_module="lightning_compress.conf"):
            cfg = compose("train", overrides=[f"recipe={recipe}", *overrides], return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = out
            cfg.hydra.job.num = 0
            cfg.hydra.job.id = "bench"
        HydraConfig.instance().set_config(cfg)
        try:
            yield cfg
        finally:
            GlobalHydra.instance().clear()


def quiet_run(seed: int, epochs: int | None = None) -> list[str]:
    """Overrides every benchmark run shares: the seed, (the epochs,) no logger, no checkpoints, no progress output."""
    overrides = [
        f"seed={seed}",
        "logger=none",
        "callbacks=none",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]
    return overrides if epochs is None else [*overrides, f"trainer.max_epochs={epochs}"]


def environment() -> dict[str, Any]:
    """Where the numbers were measured."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def mean_sd_text(values: Sequence[float], digits: int = 2) -> str:
    """``"mean ± sd"`` of ``values`` (sample standard deviation), for a results table."""
    mean, sd = mean_std(values)
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


@dataclass(frozen=True)
class NetRuns:
    """One net's share of per-seed runs stored as ``{"<net>/<key>": entry}``: its keys and dense references.

    Attributes:
        net: the net's prefix.
        runs: the seeds' runs that hold the net.
        keys: the net's configurations, in the first run's order.
        dense: the keys of its dense references (``dense@<lr>``).
    """

    net: str
    runs: list[dict[str, Any]]
    keys: list[str]
    dense: list[str]

    def best_dense(self, run: dict[str, Any]) -> float:
        """The best dense test accuracy of one seed (what drops are measured against)."""
        return max(run[f"{self.net}/{k}"]["acc"] for k in self.dense)

    def dense_wall(self, run: dict[str, Any]) -> float:
        """The fastest dense fit of one seed (seconds)."""
        return min(run[f"{self.net}/{k}"]["wall_s"] for k in self.dense)


def net_runs(runs: Sequence[dict[str, Any]], net: str) -> NetRuns | None:
    """The runs, keys and dense references of ``net``, or ``None`` when no run holds it."""
    held = [r for r in runs if any(k.startswith(f"{net}/") for k in r)]
    if not held:
        return None
    keys = [k.split("/", 1)[1] for k in held[0] if k.startswith(f"{net}/")]
    return NetRuns(net, held, keys, [k for k in keys if k.startswith("dense@")])


def write_results(name: str, payload: dict[str, Any], table: list[dict[str, Any]], notes: str = "") -> Path:
    """Write ``results/<name>.json`` (everything) and ``results/<name>.md`` (the table), atomically."""
    RESULTS.mkdir(exist_ok=True)
    payload = {"benchmark": name, "environment": environment(), **payload, "table": table}
    columns = list(table[0]) if table else []
    lines = [f"# {name}", "", notes, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in table]
    lines += [
        "",
        f"Measured {payload['environment']['date']} on {payload['environment']['cpus']} CPUs, "
        f"torch {payload['environment']['torch']}, GPU: {payload['environment']['cuda']}.",
    ]
    for suffix, text in ((".json", json.dumps(payload, indent=2)), (".md", "\n".join(lines) + "\n")):
        target = RESULTS / f"{name}{suffix}"
        tmp = target.with_suffix(suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(target)
    return RESULTS / f"{name}.md"


def quiet_trainer(max_epochs: int, callbacks: Sequence[pl.Callback] = (), **overrides: Any) -> pl.Trainer:
    """A CPU Trainer that logs, checkpoints and prints nothing (the benchmarks' fits); ``overrides`` go through."""
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return pl.Trainer(max_epochs=max_epochs, callbacks=list(callbacks), **{**settings, **overrides})


class _MallInfo2(ctypes.Structure):
    _FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    _fields_ = [(name, ctypes.c_size_t) for name in (*_FIELDS, "keepcost")]


@functools.cache
def _mallinfo2() -> Any:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    return libc.mallinfo2


def allocated_bytes() -> int:
    """The bytes the C allocator has handed out and not taken back (``mallinfo2``; Linux with glibc only).

    Tensors, NumPy arrays, library buffers; not the pages it keeps free: a lower and steadier figure than the
    resident set.
    """
    info = _mallinfo2()()
    return int(info.uordblks + info.hblkhd)


class PeakRss:
    """Largest resident set (bytes) of this process while running, from /proc every 20 ms (it shares the GIL)."""

    def __init__(self, series: bool = False, interval: float = 0.02) -> None:
        self.peak = 0
        self.interval = interval
        #: with ``series``: (``time.perf_counter()``, bytes) of every sample, for peaks within a span of the fit
        self.samples: list[tuple[float, int]] | None = [] if series else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def peak_between(self, start: float, end: float) -> int:
        """The largest sample from ``start`` to ``end`` (``perf_counter`` seconds), the nearest one if none fell in."""
        if not self.samples:
            return self.peak
        inside = [rss for t, rss in self.samples if start <= t <= end]
        if inside:
            return max(inside)
        return min(self.samples, key=lambda s: min(abs(s[0] - start), abs(s[0] - end)))[1]

    @staticmethod
    def now() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self.now()
            self.peak = max(self.peak, rss)
            if self.samples is not None:
                self.samples.append((time.perf_counter(), rss))
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class PeakAllocated(PeakRss):
    """The most the C allocator held (:func:`allocated_bytes`) while running, sampled every 2 ms."""

    def __init__(self, series: bool = False) -> None:
        super().__init__(series, interval=0.002)

    @staticmethod
    def now() -> int:
        return allocated_bytes()


def kept_by_model(module: torch.nn.Module) -> set[int]:
    """Ids of what the model itself keeps alive: its tensors and its representation (e.g. SuccessivePruning's stream).

    Seed :func:`held_bytes` with them, to count only the memory a callback alone keeps after ``fit``.
    """
    from lightning_compress.representation import find_representation

    seen = {id(t) for t in (*module.parameters(), *module.buffers())}
    held_bytes(find_representation(module), seen)
    return seen


def held_bytes(obj: Any, seen: set[int] | None = None, depth: int = 0) -> int:
    """Bytes of the tensors and arrays reachable from a callback's attributes.

    Followed: dicts, lists, tuples, sets and the attributes of the library's own objects (guards, histories), a few
    levels deep; tensors count their storage, NumPy arrays and bytes their length, Python numbers and containers
    their object size. Small ints are shared by Python and counted anyway (an upper bound).
    """
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 8:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, bytes | bytearray):
        return len(obj)
    if isinstance(obj, int | float) and not isinstance(obj, bool):
        return sys.getsizeof(obj)  # a history kept as Python numbers costs 24-32 bytes a value
    if isinstance(obj, dict):
        return sys.getsizeof(obj) + sum(held_bytes(v, seen, depth + 1) for v in obj.values())
    if isinstance(obj, list | tuple | set | frozenset):
        return sys.getsizeof(obj) + sum(held_bytes(v, seen, depth + 1) for v in obj)
    if isinstance(obj, pl.Callback) and depth > 0:
        return 0  # another callback (a composed fit's order list): counted on its own
    if isinstance(obj, pl.Callback) or type(obj).__module__.startswith("lightning_compress"):
        return sum(held_bytes(v, seen, depth + 1) for v in getattr(obj, "__dict__", {}).values())
    return 0
