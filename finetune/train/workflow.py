"""`finetune train` from a loaded recipe to a finished run directory, in the order a user wants errors.

    code = fine_tune(recipe, request, console)   exit code (below); raises Stopped on a signal or divergence

Check the output folder, trackers and model path -> read the data -> check --resume -> (hand over to
torchrun) -> prepare (tokenizer, tokens, plan) -> print the plan -> stop here on --dry-run -> train ->
print the summary.

Exit codes: 0 done; NOT_IMPROVED (3) done, but the best validation loss is not below the base
model's (the adapter is written and flagged `improved: false`); torchrun's code under --nproc.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from finetune.config import Recipe
from finetune.data import batching
from finetune.data.read import check_objective, load_splits
from finetune.model import loading
from finetune.model.devices import is_main_process, under_torchrun, world_size
from finetune.paths import looks_like_path
from finetune.run import run_dir
from finetune.train import launch, loop, report
from finetune.train.prepare import prepare
from finetune.train.resume import check_resumable
from finetune.train.trainer import check_trackers

NOT_IMPROVED = 3


@dataclass
class TrainRequest:
    """What the command line asked for, beyond the recipe."""

    run: Path
    recipe_file: Path | None = None  # None when --resume reads the run's own recipe.yaml
    overwrite: bool = False
    resume: bool = False
    dry_run: bool = False
    force: bool = False
    nproc: int = 1
    progress: bool = True
    verbose: bool = False
    worker_args: list[str] = field(default_factory=list)  # the same command for torchrun's workers (--nproc)


def fine_tune(recipe: Recipe, request: TrainRequest, console: Console) -> int:
    run = request.run
    if request.resume and run_dir.is_finished(run):
        console.print(f"{run} is finished (metrics.json): nothing to resume")
        return 0
    inputs = run_inputs(recipe, request.recipe_file)
    # Cheap checks first, in this order, before any data is read: the output folder, the trackers and the
    # batching mode, then the model path (a hub id is one config.json); then the data and --resume.
    main = is_main_process()  # under torchrun rank 0 alone writes RUN: the other ranks must not see it appear
    if not request.resume and main:
        run_dir.check_output(run, request.overwrite, inputs)
    check_trackers(recipe.train.report_to)
    batching.batching_mode(recipe)  # data.packing: on with an unsuitable attention kernel
    fsdp_note = launch.check_fsdp(recipe.train.fsdp, request.nproc, request.dry_run)
    relaunching = request.nproc > 1 and not under_torchrun() and not request.dry_run
    backend = "hf"
    if not (request.dry_run or relaunching):
        # before transformers: Unsloth must patch it first. DPO/ORPO and model.adapter run on transformers + peft.
        hf_only = recipe.train.objective != "sft" or recipe.model.adapter is not None
        backend = loading.choose_backend("hf" if hf_only else recipe.model.backend)
    loading.quiet_libraries(request.verbose)
    model_path = loading.resolve_model_path(recipe.model)
    if recipe.model.adapter is not None:
        loading.check_adapter_folder(recipe.model.adapter)
    splits = load_splits(recipe.data)
    check_objective(recipe.train.objective, splits.format, recipe.data)
    point = None
    if request.resume:  # the checkpoint must be of this recipe and data: known before any tokenizing
        fingerprint = {"recipe_hash": recipe.fingerprint(), "data_hash": splits.data_hash}
        point = check_resumable(run, fingerprint, recipe.resolved_dict())
        if main:
            run_dir.check_unlocked(run)
    if relaunching:  # everything the user can get wrong is checked: one process per device under torchrun
        return launch.relaunch(request.nproc, request.worker_args)
    prepared = prepare(recipe, splits, world_size() if under_torchrun() else request.nproc, model_path)
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
        resume_point=point,
        progress=request.progress,
        force=request.force,
        backend=backend,
        inputs=inputs,
    )
    launch.finish()  # not after an error: leaving the group is collective and could hang beside a failed rank
    if is_main_process():
        report.print_summary(console, metrics, request.run)
    return NOT_IMPROVED if metrics.get("improved") is False else 0


def run_inputs(recipe: Recipe, recipe_file: Path | None) -> tuple[Path, ...]:
    """The local files and folders a run reads: --overwrite must never delete one of them."""
    data = recipe.data
    names = [data.path, data.train, data.validation, data.test, recipe.model.adapter]
    if not recipe.model.name.startswith("builtin:"):
        names.append(recipe.model.name)
    found = [Path(name) for name in names if name and (Path(name).exists() or looks_like_path(name))]
    return tuple(found + ([recipe_file] if recipe_file else []))
