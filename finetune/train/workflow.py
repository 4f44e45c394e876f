"""`finetune train` from a loaded recipe to a finished run directory, in the order a user wants errors.

    code = fine_tune(recipe, request, console)   0, or torchrun's exit code under --nproc; raises Stopped

Read the data -> (hand over to torchrun) -> prepare (tokenizer, tokens, plan) -> print the plan
-> stop here on --dry-run -> train -> print the summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from finetune.config import Recipe
from finetune.data.read import load_splits
from finetune.model import loading
from finetune.model.devices import is_main_process, under_torchrun, world_size
from finetune.train import launch, loop, report
from finetune.train.prepare import prepare


@dataclass
class TrainRequest:
    """What the command line asked for, beyond the recipe."""

    run: Path
    overwrite: bool = False
    resume: bool = False
    dry_run: bool = False
    force: bool = False
    nproc: int = 1
    progress: bool = True
    verbose: bool = False
    worker_args: list[str] = field(default_factory=list)  # the same command for torchrun's workers (--nproc)


def fine_tune(recipe: Recipe, request: TrainRequest, console: Console) -> int:
    splits = load_splits(recipe.data)
    fsdp_note = launch.check_fsdp(recipe.train.fsdp, request.nproc, request.dry_run)
    if request.nproc > 1 and not under_torchrun() and not request.dry_run:
        # Recipe and data are valid, and so is the model path (exit 2 here, not a worker failure):
        # hand the same command to torchrun, one process per device.
        loading.resolve_model_path(recipe.model)
        return launch.relaunch(request.nproc, request.worker_args)
    backend = "hf"
    if not request.dry_run:
        backend = loading.choose_backend(recipe.model.backend)  # before transformers: Unsloth must patch it first
    loading.quiet_libraries(request.verbose)
    prepared = prepare(recipe, splits, world_size() if under_torchrun() else request.nproc)
    if not is_main_process():
        console.quiet = True  # one voice: rank 0 prints the plan, the progress and the summary
    report.print_plan(console, recipe, prepared.plan, request.run, prepared.batching)
    if fsdp_note:
        console.print(f"[yellow]note:[/] {fsdp_note}")
    if request.dry_run:
        for note in prepared.notes:
            console.print(f"[yellow]note:[/] {note}")
        console.print("[green]dry run:[/] recipe and data are valid; no weights were loaded")
        return 0
    metrics = loop.train(
        recipe,
        request.run,
        console,
        prepared,
        overwrite=request.overwrite,
        resume=request.resume,
        progress=request.progress,
        force=request.force,
        backend=backend,
    )
    launch.finish()  # not after an error: leaving the group is collective and could hang beside a failed rank
    if is_main_process():
        report.print_summary(console, metrics, request.run)
    return 0
