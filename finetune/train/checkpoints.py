"""Crash-safe checkpoints, resume checks, and a clean stop on Ctrl-C / SIGTERM.

The trainer writes RUN/checkpoints/checkpoint-N (adapter, optimizer, scheduler, RNG states, trainer
state with the data position). A checkpoint counts as complete only once `finetune-complete.json` is
in it: that file is written last, atomically (temporary file + rename), after the trainer has
finished writing everything else, and records the recipe and data hashes. A crash mid-write
therefore leaves a folder without the marker, which resume ignores.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from finetune.run import run_dir
from finetune.train.launch import all_ranks_max
from finetune.train.resume import MARKER


class MarkComplete(TrainerCallback):
    """on_save runs after the trainer has written the whole checkpoint: seal it.

    The seal records the recipe and data hashes, the events so far, the base model's validation loss,
    and whether training had ended there (last step, or early stopping): resuming from such a
    checkpoint only writes what the killed process did not (adapter, test score, metrics).
    """

    def __init__(self, fingerprint: dict[str, str], events: list[dict[str, Any]], sharded: bool = False, stopper=None):
        self.fingerprint = fingerprint
        self.events = events  # carried in the marker, so a resumed run keeps the earlier events
        self.sharded = sharded  # written under FSDP: not resumable yet (check_resumable)
        self.stopper = stopper  # transformers' EarlyStoppingCallback, or None
        self.extra: dict[str, Any] = {}  # base_eval_loss, once measured

    def stopped_early(self) -> bool:
        stopper = self.stopper
        return bool(stopper and stopper.early_stopping_patience_counter >= stopper.early_stopping_patience)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            seal = {
                **self.fingerprint,
                **self.extra,
                "global_step": state.global_step,
                "events": self.events,
                "fsdp": self.sharded,
                "stopped_early": self.stopped_early(),
                "final": state.global_step >= state.max_steps or self.stopped_early(),
            }
            run_dir.apply_umask(folder)  # safetensors writes the adapter 0600 (a temporary file, renamed)
            run_dir.write_json(folder / MARKER, seal)


class StopOnSignal(TrainerCallback):
    """First Ctrl-C or SIGTERM: finish the current step, save a checkpoint, stop. A second one aborts."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        self.received = signum
        self.uninstall()  # the next signal gets the default behaviour: immediate stop

    def on_step_end(self, args, state, control, model=None, **kwargs):

        # Every rank stops at the same step, or the others would wait forever in the next collective.
        device = next(model.parameters()).device if model is not None else "cpu"
        signum = all_ranks_max(float(self.received or 0), device)
        if signum:
            self.received = int(signum)
            control.should_save = True
            control.should_training_stop = True

    @property
    def exit_code(self) -> int:
        return 128 + (self.received or signal.SIGINT)  # 130 for SIGINT, 143 for SIGTERM
