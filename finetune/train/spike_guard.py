"""The loss-spike guard: skip bad updates, roll back after repeated spikes, stop a diverged run.

Every optimizer step is judged before the update is applied:
  spike  = the step's loss or gradient norm is not finite, or loss > factor x median of the last
           `window` accepted losses (the first step, taken before any update, is always accepted
           and is the first reference: a fine-tune should never sit at `factor` x its starting loss),
           or the gradient norm is 100x the median accepted one;
  collapse = the loss sits at ln(vocabulary) with a vanished gradient: the model predicts nothing
           (a learning rate that wrecked the weights); rolls back at once (spike_judge.py);
  skip   = the gradients are dropped (p.grad = None), so the optimizer leaves the weights alone;
  rollback = after `max_spikes` spikes within `window` steps, or a collapse, the adapter weights and
           optimizer state return to the last good snapshot (taken at the start and at every checkpoint
           whose validation loss was finite and not at ln(vocabulary)) and the learning rate is
           multiplied by `lr_factor`;
  diverged = one more rollback than `max_rollbacks` would be needed: training stops.
Each decision is recorded as an event (metrics.json `events`).
"""

from __future__ import annotations

import copy
import math
from typing import Any

from transformers import TrainerCallback

from finetune.config import SpikeGuardSection
from finetune.train.launch import all_ranks_max
from finetune.train.spike_judge import SpikeJudge


class SpikeGuard(TrainerCallback):
    def __init__(
        self,
        cfg: SpikeGuardSection,
        events: list[dict[str, Any]],
        uniform_loss: float | None = None,
        floor: float = 0.0,
    ):
        self.cfg = cfg
        self.judge = SpikeJudge(cfg, uniform_loss, floor)
        self.events = events
        self.micro_losses: list = []
        self.snapshot: dict[str, Any] | None = None
        self.rollbacks = 0
        self.diverged = False

    def observe_loss(self, loss) -> None:
        """Called by the trainer after each micro-batch's backward pass (a tensor: no GPU sync here)."""
        self.micro_losses.append(loss.detach())

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self._take_snapshot(model, optimizer)

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):

        loss = float(sum(self.micro_losses)) if self.micro_losses else float("nan")
        self.micro_losses = []
        trainable = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
        grad_norm = math.sqrt(sum(float(p.grad.detach().float().pow(2).sum()) for p in trainable))
        # Every rank must take the same decision: judge the worst rank's loss and gradient norm (NaN wins).
        # Under FSDP each rank holds a shard of the gradients: the norm judged is the largest shard's.
        device = trainable[0].device if trainable else "cpu"
        loss = all_ranks_max(loss if math.isfinite(loss) else math.inf, device)
        grad_norm = all_ranks_max(grad_norm if math.isfinite(grad_norm) else math.inf, device)
        step = state.global_step + 1  # the step being taken
        kind, median = self.judge.verdict(loss, grad_norm)
        if kind is None:
            return
        for p in trainable:
            p.grad = None  # the optimizer skips parameters without a gradient: no update this step
        self.events.append(
            {"type": kind, "step": step, "loss": _num(loss), "grad_norm": _num(grad_norm), "median": _num(median)}
        )
        # A collapsed model does not recover by skipping steps: back to the last good weights at once.
        if kind == "collapse" or self.judge.record_spike(step):
            self._roll_back(step, model, optimizer, lr_scheduler, control)

    def on_save(self, args, state, control, model=None, optimizer=None, **kwargs):
        evals = [e["eval_loss"] for e in state.log_history if "eval_loss" in e]
        if evals and math.isfinite(evals[-1]) and not self.judge.at_uniform(evals[-1]):
            self._take_snapshot(model, optimizer)

    def _take_snapshot(self, model, optimizer) -> None:
        if model is None:
            return
        params = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
        state = _to_cpu(optimizer.state_dict()) if optimizer is not None else None  # no second copy on the GPU
        self.snapshot = {"params": params, "optimizer": state}

    def _roll_back(self, step: int, model, optimizer, lr_scheduler, control) -> None:
        import torch

        if self.rollbacks >= self.cfg.max_rollbacks:
            self.diverged = True
            control.should_training_stop = True
            self.events.append({"type": "diverged", "step": step, "rollbacks": self.rollbacks})
            return
        self.rollbacks += 1
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in self.snapshot["params"]:
                    p.copy_(self.snapshot["params"][name].to(p.device))
        if optimizer is not None and self.snapshot["optimizer"] is not None:
            optimizer.load_state_dict(copy.deepcopy(self.snapshot["optimizer"]))
        for group in optimizer.param_groups if optimizer is not None else []:
            group["lr"] *= self.cfg.lr_factor
        if lr_scheduler is not None and hasattr(lr_scheduler, "base_lrs"):
            lr_scheduler.base_lrs = [lr * self.cfg.lr_factor for lr in lr_scheduler.base_lrs]  # persists
        self.judge.reset_spikes()
        self.events.append(
            {"type": "rollback", "step": step, "lr_factor": self.cfg.lr_factor, "rollback": self.rollbacks}
        )


def _to_cpu(value):
    """A deep copy of an optimizer state dict with every tensor on the CPU (load_state_dict moves them back)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return copy.deepcopy(value)


def _num(value: float | None) -> float | str | None:
    """JSON has no NaN/inf: keep them readable as strings."""
    if value is None or math.isfinite(value):
        return value
    return str(value)
