"""The spike guard's decision rule alone, in plain Python: testable on synthetic loss sequences
without transformers. The rule is described in spike_guard.py, which applies it to a training run."""

from __future__ import annotations

import math
import statistics
from collections import deque

from finetune.config import SpikeGuardSection


class SpikeJudge:
    """The decision rule alone (pure Python), so it can be tested on synthetic loss sequences."""

    def __init__(self, cfg: SpikeGuardSection):
        self.cfg = cfg
        self.accepted: deque[float] = deque(maxlen=cfg.window)
        self.spike_steps: deque[int] = deque()

    def is_spike(self, loss: float, grad_norm: float) -> tuple[bool, float | None]:
        """(spike?, the median it was compared with)."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return True, self.median()
        median = self.median()
        if median is not None and loss > self.cfg.factor * median:
            return True, median
        self.accepted.append(loss)
        return False, median

    def median(self) -> float | None:
        return statistics.median(self.accepted) if self.accepted else None

    def record_spike(self, step: int) -> bool:
        """Remember a spike; True when the window now holds enough spikes to roll back."""
        self.spike_steps.append(step)
        while self.spike_steps and self.spike_steps[0] <= step - self.cfg.window:
            self.spike_steps.popleft()
        return len(self.spike_steps) >= self.cfg.max_spikes

    def reset_spikes(self) -> None:
        self.spike_steps.clear()
