"""The spike guard's decision rule alone, in plain Python: testable on synthetic loss sequences
without transformers. The rule is described in spike_guard.py, which applies it to a training run."""

from __future__ import annotations

import math
import statistics
from collections import deque

from finetune.config import SpikeGuardSection

GRAD_EXPLOSION = 100.0  # x the median accepted gradient norm
UNIFORM_TOLERANCE = 1e-3  # relative distance of the loss to ln(vocabulary) that counts as "at uniform"
VANISHED_GRAD = 1e-3  # x the median accepted gradient norm (or absolute, before three steps are known)


class SpikeJudge:
    """The decision rule alone (pure Python), so it can be tested on synthetic loss sequences."""

    def __init__(self, cfg: SpikeGuardSection, uniform_loss: float | None = None, floor: float = 0.0):
        self.cfg = cfg
        self.uniform_loss = uniform_loss  # ln(vocabulary size): the loss of a model that predicts nothing
        # A loss at or below `floor` is never a spike. DPO's loss heads for 0 as the margins grow, so 4x a
        # median of 0.01 is noise; above ln 2 (a policy no better than its reference) it is not.
        self.floor = floor
        self.accepted: deque[float] = deque(maxlen=cfg.window)
        self.grad_norms: deque[float] = deque(maxlen=cfg.window)  # of the accepted steps
        self.spike_steps: deque[int] = deque()

    def verdict(self, loss: float, grad_norm: float) -> tuple[str | None, float | None]:
        """(None | "spike" | "collapse", the median loss it was compared with).

        spike     non-finite loss or gradient norm, a loss above factor x the median accepted loss, or a
                  gradient norm GRAD_EXPLOSION times the median accepted one (orders of magnitude: 4x
                  swings are normal early on, 100x are not).
        collapse  the loss sits at ln(vocabulary) (the model predicts the uniform distribution) while
                  the gradient has vanished: a learning rate that wrecked the weights. It is no spike
                  (the loss may even be lower than at the start), and it does not recover by itself.
        """
        median = self.median()
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return "spike", median
        if median is not None and loss > max(self.cfg.factor * median, self.floor):
            return "spike", median
        typical_grad = statistics.median(self.grad_norms) if len(self.grad_norms) >= 3 else None
        if typical_grad and grad_norm > GRAD_EXPLOSION * typical_grad:
            return "spike", median
        if self.at_uniform(loss) and grad_norm <= VANISHED_GRAD * (typical_grad or 1.0):
            return "collapse", median
        self.accepted.append(loss)
        self.grad_norms.append(grad_norm)
        return None, median

    def at_uniform(self, loss: float) -> bool:
        return self.uniform_loss is not None and abs(loss - self.uniform_loss) <= UNIFORM_TOLERANCE * self.uniform_loss

    def is_spike(self, loss: float, grad_norm: float) -> tuple[bool, float | None]:
        """(spike or collapse?, the median it was compared with)."""
        kind, median = self.verdict(loss, grad_norm)
        return kind is not None, median

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
