"""Trainer callbacks: one rich progress bar instead of tqdm and log dicts, and the loss history."""

from __future__ import annotations

import math

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback


class RichProgress(TrainerCallback):
    """A single progress bar over optimizer steps, showing the latest train and validation loss."""

    def __init__(self, console: Console, enabled: bool = True):
        self.console = console
        self.enabled = enabled
        self.progress: Progress | None = None
        self.task = None
        self.loss = math.nan
        self.eval_loss = math.nan
        self.best = math.inf

    def on_train_begin(self, args, state, control, **kwargs):
        if not (self.enabled and state.is_world_process_zero):
            return
        self.progress = Progress(
            TextColumn("[bold]training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, status="")

    def on_step_end(self, args, state, control, **kwargs):
        self._update(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self.loss = logs["loss"]
        if "eval_loss" in logs:
            self.eval_loss = logs["eval_loss"]
            self.best = min(self.best, self.eval_loss)
        self._update(state)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self._update(state)
            self.progress.stop()
            self.progress = None

    def _update(self, state) -> None:
        if self.progress is None:
            return
        status = f"loss {self.loss:.4f}  val {self.eval_loss:.4f}  best {self.best:.4f}"
        self.progress.update(self.task, completed=state.global_step, status=status)


def loss_history(log_history: list[dict]) -> list[dict]:
    """Trainer's log_history -> the metrics.json `history` rows: {step, loss} and {step, eval_loss}."""
    rows = []
    for entry in log_history:
        for key in ("loss", "eval_loss"):
            if key in entry and "step" in entry:
                rows.append({"step": int(entry["step"]), key: float(entry[key])})
    return rows
