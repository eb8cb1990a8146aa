"""Event guards that refuse on purpose: a callback's path past a refused event, tested without luck."""

from __future__ import annotations

from typing import Any

import torch


class RefuseFirstEvents:
    """An event guard that refuses every trial of its first ``count`` events, then judges as it is."""

    def __init__(self, guard: Any, count: int) -> None:
        self.guard, self.left, self.events = guard, count, 0

    def install(self) -> None:
        begin, judge = self.guard.begin, self.guard.judge

        def counted_begin(before: torch.Tensor) -> None:
            self.events += 1
            begin(before)

        def refusing_judge(before: torch.Tensor, after: torch.Tensor) -> Any:
            cost = judge(before, after)
            if self.events <= self.left:
                return type(cost)(0.5, 0.0, False)  # half the samples lost: over any budget
            return cost

        self.guard.begin, self.guard.judge = counted_begin, refusing_judge
