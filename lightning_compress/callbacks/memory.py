"""Handing the memory a compression event freed back to the operating system.

A compression event allocates and frees working buffers of the model's size (a stage's float64 vectors, a search's
binning chunks, calibration statistics) between two training steps. glibc keeps freed blocks below its mmap
threshold (which grows up to 32 MiB as large blocks are freed) in its heap, so they stay resident; the next training
step's activations then come on top of them and the process's resident set peaks at live memory plus everything the
events ever freed. ``malloc_trim(0)`` returns the free pages of every heap to the system (a few milliseconds).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from typing import Any

__all__ = ["release_freed_memory"]


@functools.cache
def _malloc_trim() -> Any:
    """The C library's ``malloc_trim`` (glibc), or ``None`` where there is none (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Return freed heap memory to the operating system; ``True`` when something was released.

    Examples:
        >>> release_freed_memory() in (True, False)
        True
    """
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
