"""Crash-safe checkpoints, resume checks, and a clean stop on Ctrl-C / SIGTERM.

The trainer writes RUN/checkpoints/checkpoint-N (adapter, optimizer, scheduler, RNG states, trainer
state with the data position). A checkpoint counts as complete only once `finetune-complete.json` is
in it: that file is written last, atomically (temporary file + rename), after the trainer has
finished writing everything else, and records the recipe and data hashes. A crash mid-write
therefore leaves a folder without the marker, which resume ignores.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from finetune.errors import UserError
from finetune.run import run_dir
from finetune.train.launch import all_ranks_max

MARKER = "finetune-complete.json"


class MarkComplete(TrainerCallback):
    """on_save runs after the trainer has written the whole checkpoint: seal it."""

    def __init__(self, fingerprint: dict[str, str], events: list[dict[str, Any]], sharded: bool = False):
        self.fingerprint = fingerprint
        self.events = events  # carried in the marker, so a resumed run keeps the earlier events
        self.sharded = sharded  # written under FSDP: not resumable yet (check_resumable)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            seal = {**self.fingerprint, "global_step": state.global_step, "events": self.events, "fsdp": self.sharded}
            run_dir.write_json(folder / MARKER, seal)


def latest_complete(run: Path) -> Path | None:
    """The newest sealed checkpoint of a run, or None."""
    folder = run / "checkpoints"
    sealed = [p for p in folder.glob("checkpoint-*") if (p / MARKER).is_file()] if folder.is_dir() else []
    return max(sealed, key=lambda p: int(p.name.rsplit("-", 1)[1]), default=None)


def check_resumable(run: Path, fingerprint: dict[str, str]) -> Path:
    """The checkpoint to resume from, after checking it belongs to this recipe and this data."""
    checkpoint = latest_complete(run)
    if checkpoint is None:
        raise UserError(f"{run}: no complete checkpoint to resume from; start the run without --resume")
    saved = json.loads((checkpoint / MARKER).read_text())
    if saved.get("fsdp"):  # measured: the trainer's FSDP loading made a resumed run diverge (docs/multi-gpu.md)
        raise UserError(f"{run}: a train.fsdp run cannot be resumed yet; start it over with --overwrite")
    for key, what in (("recipe_hash", "recipe"), ("data_hash", "data")):
        if saved.get(key) != fingerprint[key]:
            raise UserError(
                f"{run}: the {what} changed since {checkpoint.name} was written; resuming would mix two runs. "
                "Restore it, or start over with --overwrite"
            )
    return checkpoint


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
