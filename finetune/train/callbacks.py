"""Trainer callbacks: a rich progress bar on a terminal, plain log lines everywhere (RUN/train.log, and
stderr when it is not a terminal: nohup, CI, Slurm), and the loss history."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback


class RichProgress(TrainerCallback):
    """A single progress bar over optimizer steps, showing the latest train and validation loss."""

    def __init__(self, console: Console, enabled: bool = True, tokens: Callable[[], int] | None = None):
        self.console = console
        self.enabled = enabled
        self.rate = Throughput(tokens)
        self.lr = math.nan
        self.epoch = 0.0
        self.tokens_per_s = math.nan  # read at each log, not each step: counting syncs with the GPU
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
        self.rate.start(state.global_step)
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, status="")

    def on_step_end(self, args, state, control, **kwargs):
        self._update(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self.loss = logs["loss"]
            self.lr = logs.get("learning_rate", self.lr)
            self.epoch = logs.get("epoch", self.epoch)
            self.tokens_per_s = self.rate.per_second()
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
        status = (
            f"loss {self.loss:.4f}  val {self.eval_loss:.4f}  best {self.best:.4f}  lr {self.lr:.1e}  "
            f"epoch {self.epoch:.2f}  {self.tokens_per_s:,.0f} tok/s"
        )
        self.progress.update(self.task, completed=state.global_step, status=status)


class Throughput:
    """Trained tokens per second since training (re)started; `tokens` reads the trainer's count."""

    def __init__(self, tokens: Callable[[], int] | None):
        self.tokens = tokens
        self.started = time.perf_counter()
        self.first_step = 0

    def start(self, step: int) -> None:
        self.started, self.first_step = time.perf_counter(), step

    def per_second(self) -> float:
        seconds = time.perf_counter() - self.started
        return (self.tokens() / seconds) if self.tokens and seconds > 0 else math.nan

    def elapsed_and_eta(self, step: int, total: int) -> tuple[str, str]:
        seconds = time.perf_counter() - self.started
        done = step - self.first_step
        eta = seconds / done * (total - step) if done > 0 else math.nan
        return _clock(seconds), _clock(eta)


class TrainLog(TrainerCallback):
    """One plain line per logged training step and per validation, appended to RUN/train.log (follow a
    run with `tail -f`) and, with `echo` (stderr is not a terminal), printed to stderr as well."""

    def __init__(self, path: Path, echo: bool, tokens: Callable[[], int] | None = None):
        self.path = path
        self.echo = echo
        self.rate = Throughput(tokens)
        self.best = math.inf

    def on_train_begin(self, args, state, control, **kwargs):
        self.rate.start(state.global_step)
        if state.is_world_process_zero:
            self._write(f"start at step {state.global_step} of {state.max_steps}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        where = (
            f"step {state.global_step}/{state.max_steps}" if state.max_steps else "before training (the base model):"
        )
        if "loss" in logs:
            elapsed, eta = self.rate.elapsed_and_eta(state.global_step, state.max_steps)
            self._write(
                f"{where} epoch {logs.get('epoch', state.epoch or 0):.2f} loss {logs['loss']:.4f} "
                f"lr {logs.get('learning_rate', math.nan):.2e} tokens/s {self.rate.per_second():,.0f} "
                f"elapsed {elapsed} eta {eta}"
            )
        if "eval_loss" in logs:
            self.best = min(self.best, logs["eval_loss"])
            self._write(f"{where} validation loss {logs['eval_loss']:.4f} (best {self.best:.4f})")

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._write(f"end at step {state.global_step} of {state.max_steps}")

    def _write(self, line: str) -> None:
        stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n"
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(stamped)
        if self.echo:
            sys.stderr.write(stamped)
            sys.stderr.flush()


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


REWARD_KEYS = ("eval_rewards/accuracies", "eval_rewards/margins")  # what DPO and ORPO log at each validation


def loss_history(log_history: list[dict]) -> list[dict]:
    """Trainer's log_history -> the metrics.json `history` rows: {step, loss} and {step, eval_loss}
    (for DPO/ORPO with the validation reward accuracy and margin)."""
    rows = []
    for entry in log_history:
        for key in ("loss", "eval_loss"):
            if key in entry and "step" in entry:
                row = {"step": int(entry["step"]), key: float(entry[key])}
                if key == "eval_loss":
                    row.update({name: float(entry[name]) for name in REWARD_KEYS if name in entry})
                rows.append(row)
    return rows
