"""Compression events hand the memory they freed back to the operating system."""

from __future__ import annotations

import sys

import pytest

from lightning_compress.callbacks import events as events_module
from lightning_compress.callbacks.base import CompressionCallback
from lightning_compress.callbacks.events import compression_event
from lightning_compress.callbacks.memory import _malloc_trim


class _Events(CompressionCallback):
    @compression_event("stage")
    def stage(self, fail: bool) -> int:
        if fail:
            raise RuntimeError("event failed")
        return 1


def test_every_event_releases_freed_memory_even_when_it_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(events_module, "release_freed_memory", lambda: calls.append(1) or True)
    events = _Events()
    assert events.stage(False) == 1
    with pytest.raises(RuntimeError, match="event failed"):
        events.stage(True)
    assert len(calls) == 4  # before and after each event
    assert events.event_counts["stage"] == 2
    # each event's span is on the timeline (bench.scale reads each event's memory peak within it), failed ones too
    assert [name for name, _, _ in events.event_log] == ["stage", "stage"]
    assert all(start <= end for _, start, end in events.event_log)
    assert events.event_log[0][2] <= events.event_log[1][1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim is Linux-only")
def test_malloc_trim_is_found_on_linux() -> None:
    assert _malloc_trim() is not None
