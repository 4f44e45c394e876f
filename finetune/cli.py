"""The `finetune` command line. Commands are thin: parse, call the module that does the work, map errors.

Heavy libraries (torch, transformers, peft, trl) are imported inside the commands that need them,
so `finetune --help` and `finetune validate` answer instantly.
"""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from pathlib import Path
from typing import Annotated, Callable, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from finetune import __version__
from finetune.errors import UserError, disk_full

app = typer.Typer(
    help="Fine-tune small open LLMs with QLoRA: one YAML recipe, early stopping, a held-out test score.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)  # progress and tables on stderr; stdout stays clean for --json
out = Console()

Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")]
Overrides = Annotated[
    list[str] | None, typer.Option("--set", help="Override a recipe key: --set train.epochs=2 (repeatable).")
]


def handle_errors(command: Callable) -> Callable:
    """UserError or a full disk -> one line on stderr, exit 2; Ctrl-C -> 130; anything else -> exit 1
    (traceback with --debug)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        debug = kwargs.get("debug", False)
        try:
            return command(*args, **kwargs)
        except typer.Exit:
            raise
        except UserError as err:
            if debug:
                raise
            user_error(str(err))
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as err:
            if debug:
                raise
            reason = disk_full(err)
            if reason:  # the user can fix it: as bad input, not as a bug
                user_error(f"no space left for the files being written ({reason}): free disk space or write elsewhere with -o")
            first = str(err).splitlines()[0] if str(err) else ""
            typer.echo(f"error: unexpected {err.__class__.__name__}: {first} (rerun with --debug for the traceback)", err=True)
            raise typer.Exit(1) from None

    return wrapper


def user_error(message: str) -> NoReturn:
    """One line on stderr (or, under `--nproc`, left for the launching process to print), exit 2."""
    from finetune.launch import report_user_error

    if not report_user_error(message):
        typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def quiet_libraries(verbose: bool) -> None:
    """Silence the deprecation and progress spam of the HF stack unless -v asks for it."""
    if verbose:
        return
    warnings.filterwarnings("ignore")
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    for name in ("transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars


def emit_json(data: dict) -> None:
    """The one JSON object of `--json` on stdout. NaN/inf (a diverged loss) become strings: valid JSON."""
    import json
    import math

    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    typer.echo(json.dumps(clean(data), allow_nan=False))


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"finetune {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Fine-tune small open LLMs on your data: finetune train recipes/quickstart.yaml"""


@app.command()
@handle_errors
def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Run directory (default: output.dir).")] = None,
    set_: Overrides = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty run directory.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run's newest complete checkpoint.")] = False,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Allow .bin/.pt weights (pickle can run code when loaded).")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate, read the data, print the plan; load no weights.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Train even if the VRAM estimate exceeds free GPU memory.")] = False,
    nproc: Annotated[int, typer.Option("--nproc", help="Data-parallel processes (GPUs) through torchrun.")] = 1,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar.")] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Show library warnings and logs.")] = False,
    debug: Debug = False,
) -> None:
    """Fine-tune a model as the recipe says and write a run directory.

    Example: finetune train recipes/quickstart.yaml -o runs/quick --set train.epochs=1
    """
    from finetune.config import load_recipe
    from finetune.data import load_splits
    from finetune.launch import check_fsdp, finish, is_main_process, relaunch, under_torchrun, world_size
    from finetune.training import make_plan, warnings_for

    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; choose one")
    if nproc < 1:
        raise UserError(f"--nproc must be at least 1 (got {nproc})")
    loaded = load_recipe(recipe, [*(set_ or []), *(["model.allow_pickle=true"] if allow_pickle else [])])
    run = output or Path(loaded.output.dir or f"runs/{recipe.stem}")
    loaded.output.dir = str(run)
    splits = load_splits(loaded.data)
    fsdp_note = check_fsdp(loaded.train.fsdp, nproc, dry_run)
    if nproc > 1 and not under_torchrun() and not dry_run:
        # Recipe, data and model are valid: hand the same command to torchrun, one process per device.
        from finetune.modeling import resolve_model_path

        resolve_model_path(loaded.model)  # a bad model path is exit 2 here, not a worker failure
        flags = [f"--set={s}" for s in set_ or []] + [
            flag for flag, on in (("--overwrite", overwrite), ("--resume", resume), ("--allow-pickle", allow_pickle),
                                  ("--force", force), ("-q", quiet), ("-v", verbose), ("--debug", debug)) if on
        ]  # fmt: skip
        raise typer.Exit(relaunch(nproc, [str(recipe), "-o", str(run), *flags]))
    plan = make_plan(loaded, splits, world_size() if under_torchrun() else nproc)
    from finetune.batching import batching_mode

    from finetune.trainer_setup import check_trackers

    mode = batching_mode(loaded)  # data.packing: on with an unsuitable kernel fails here, before any weight
    if dry_run and mode == "packed":
        from finetune.training import packed_plan

        plan = packed_plan(loaded, plan, splits)  # what train() will count; training itself recounts
    check_trackers(loaded.train.report_to)
    if not is_main_process():
        console.quiet = True  # one voice: rank 0 prints the plan, the progress and the summary
    print_plan(loaded, plan, run, mode, packed_counted=dry_run)
    if fsdp_note:
        console.print(f"[yellow]note:[/] {fsdp_note}")
    if dry_run:
        for note in warnings_for(loaded):
            console.print(f"[yellow]note:[/] {note}")
        console.print("[green]dry run:[/] recipe and data are valid; no weights were loaded")
        return
    from finetune.modeling import choose_backend

    backend = choose_backend(loaded.model.backend)  # before transformers: Unsloth must patch it first
    quiet_libraries(verbose)
    from finetune.training import Stopped
    from finetune.training import train as run_training

    try:
        metrics = run_training(
            loaded, run, console, overwrite=overwrite, resume=resume, progress=not quiet, force=force, backend=backend,
            splits=splits,
        )
    except Stopped as stop:  # every rank stops together (the stop decisions are agreed across ranks)
        finish()
        hint = f"; resume with: finetune train {recipe} -o {run} --resume" if stop.resumable else ""
        typer.echo(f"stopped: {stop}{hint}", err=True)
        raise typer.Exit(stop.exit_code) from None
    finish()  # not after an error: leaving the group is collective and could hang beside a failed rank
    if is_main_process():
        print_summary(metrics, run)


@app.command()
@handle_errors
def validate(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    set_: Overrides = None,
    debug: Debug = False,
) -> None:
    """Check a recipe (keys, types, values) and its data without loading a model.

    Example: finetune validate recipes/llama-3.2-1b-finance.yaml
    """
    from finetune.config import load_recipe
    from finetune.data import load_splits

    loaded = load_recipe(recipe, set_ or [])
    splits = load_splits(loaded.data)
    sizes = ", ".join(f"{k} {v}" for k, v in splits.sizes().items())
    typer.echo(f"{recipe}: valid ({splits.format} data: {sizes})")


@app.command()
@handle_errors
def recipes(debug: Debug = False) -> None:
    """List the recipes shipped with finetune, one line each."""
    import yaml

    from finetune.config import shipped_recipes_dir

    paths = sorted(shipped_recipes_dir().glob("*.yaml"))
    width = max((len(p.name) for p in paths), default=0)
    for path in paths:
        description = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("description", "")
        typer.echo(f"recipes/{path.name:<{width}}  {description}")


@app.command("vram-estimate")
@handle_errors
def vram_estimate(
    recipe: Annotated[Path | None, typer.Argument(help="Recipe YAML (optional): estimate exactly this run.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Hub id, local directory or builtin:tiny-llama.")] = None,
    method: Annotated[str | None, typer.Option("--method", help="full | lora | qlora")] = None,
    lora_r: Annotated[int | None, typer.Option("--lora-r", help="LoRA rank.")] = None,
    lora_targets: Annotated[str | None, typer.Option("--lora-targets", help="all-linear or q_proj,v_proj,...")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Micro-batch size per GPU.")] = None,
    seq_len: Annotated[int | None, typer.Option("--seq-len", help="Tokens per sequence (data.max_length).")] = None,
    gradient_checkpointing: Annotated[
        bool | None, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute activations.")
    ] = None,
    optimizer: Annotated[str | None, typer.Option("--optimizer", help="adamw_torch | adamw_8bit | paged_adamw_8bit | sgd")] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="Compute dtype: bf16 | fp16 | fp32.")] = None,
    loss_impl: Annotated[str | None, typer.Option("--loss-impl", help="fused (TRL, this tool) | full (materialised logits).")] = None,
    gpu: Annotated[str | None, typer.Option("--gpu", help="Only this GPU, e.g. T4, A100 80GB.")] = None,
    gpu_memory: Annotated[float | None, typer.Option("--gpu-memory", help="Usable GiB of your GPU.")] = None,
    measure: Annotated[bool, typer.Option("--measure", help="Also run real steps on the GPU and compare (CUDA only).")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    set_: Overrides = None,
    debug: Debug = False,
) -> None:
    """Estimate the peak GPU memory of a training run, before the run, and say which GPUs it fits.

    Example: finetune vram-estimate --model meta-llama/Llama-3.2-1B --batch-size 4 --seq-len 2048 --gpu T4
    """
    import dataclasses

    from finetune import vram
    from finetune.architectures import load_spec

    if method is not None and method not in vram.METHODS:
        raise UserError(f"--method must be one of {', '.join(vram.METHODS)} (got {method!r})")
    loaded = None
    if recipe is not None:
        from finetune.config import load_recipe

        # Flags that have a recipe key become overrides, so --measure runs exactly what is estimated.
        as_keys = {
            "lora.r": lora_r, "train.micro_batch_size": batch_size, "data.max_length": seq_len,
            "train.gradient_checkpointing": gradient_checkpointing, "train.optimizer": optimizer, "model.dtype": dtype,
            "model.name": model, "quant.method": {"lora": "none", "qlora": "nf4"}.get(method or ""),
            "lora.target_modules": f"[{lora_targets}]" if lora_targets and lora_targets != "all-linear" else lora_targets,
        }  # fmt: skip
        flags = [f"{key}={value}" for key, value in as_keys.items() if value not in (None, "")]
        loaded = load_recipe(recipe, [*(set_ or []), *flags])
        setup, model_id = vram.setup_from_recipe(loaded), loaded.model.name
        setup = dataclasses.replace(setup, **({"method": method} if method == "full" else {}),
                                    **({"loss_impl": loss_impl} if loss_impl else {}))  # fmt: skip
    else:
        if model is None:
            raise UserError("vram-estimate needs a RECIPE or --model (a hub id, local directory or builtin:tiny-llama)")
        flags = {
            "method": method, "lora_r": lora_r, "micro_batch_size": batch_size, "seq_len": seq_len,
            "gradient_checkpointing": gradient_checkpointing, "optimizer": optimizer, "dtype": dtype,
            "loss_impl": loss_impl,
            "lora_targets": tuple(t.strip() for t in lora_targets.split(","))
            if lora_targets and lora_targets != "all-linear" else lora_targets,
        }  # fmt: skip
        setup = dataclasses.replace(vram.TrainingSetup(), **{k: v for k, v in flags.items() if v is not None})
        model_id = model
    setup.validate()
    spec = load_spec(model_id)
    result = vram.estimate(spec, setup, model=model_id)
    gpus = select_gpus(gpu, gpu_memory)
    comparison = None
    if measure:
        if loaded is None or setup.method == "full" or setup.loss_impl != "fused":
            raise UserError("--measure needs a RECIPE and measures this tool's own path (lora/qlora, fused loss)")
        quiet_libraries(verbose=False)
        from finetune.vram_measure import compare
        from finetune.vram_measure import measure as run_measure

        from finetune.doctor import stdout_to_stderr

        with stdout_to_stderr():  # libraries that print while loading must not reach stdout (--json)
            comparison = compare(result, run_measure(loaded))
    if json_output:
        emit_json({**result.to_json(gpus), **({"measured": comparison} if comparison else {})})
        return
    vram.render_table(result, out, gpus)
    for name, gib in (gpus if (gpu or gpu_memory) else dict(list(vram.GPUS.items())[:1])).items():
        for tip in vram.advise(spec, setup, int(gib * vram.GiB)):
            out.print(f"[yellow]to fit {name}:[/] {tip}")
    if comparison:
        table = Table(title="measured on this GPU")
        for column in ("", "estimate GiB", "measured GiB", "error %"):
            table.add_column(column, justify="right" if column else "left")
        for name, row in comparison.items():
            table.add_row(name, f"{row['estimate_bytes'] / vram.GiB:.2f}", f"{row['measured_bytes'] / vram.GiB:.2f}",
                          f"{row['error_pct']:+.1f}")  # fmt: skip
        out.print(table)


def select_gpus(name: str | None, memory_gib: float | None) -> dict[str, float]:
    from finetune.vram import GPUS

    if memory_gib is not None:
        if memory_gib <= 0:
            raise UserError(f"--gpu-memory must be positive (got {memory_gib})")
        return {name or "your GPU": memory_gib}
    if name is None:
        return dict(GPUS)
    chosen = {k: v for k, v in GPUS.items() if name.lower().replace(" ", "") in k.lower().replace(" ", "")}
    if not chosen:
        raise UserError(f"--gpu {name!r}: unknown GPU; use one of {', '.join(GPUS)} or give --gpu-memory GIB")
    return chosen


# --------------------------------------------------------------------------------------------
# Output


def print_plan(recipe, plan, run: Path, mode: str, packed_counted: bool = False) -> None:
    quant = "4-bit " + recipe.quant.method.upper() if recipe.quant.method != "none" else "16/32-bit"
    lines = [
        f"[bold]model[/]     {recipe.model.name} ({quant}, LoRA r={recipe.lora.r}, targets {recipe.lora.target_modules})",
        f"[bold]data[/]      train {plan.train_rows} / validation {plan.validation_rows} / test {plan.test_rows} rows",
        f"[bold]schedule[/]  {plan.total_steps} steps ({plan.steps_per_epoch}/epoch), batch {plan.effective_batch}, "
        f"validate every {plan.eval_steps} steps"
        + (f", early stopping patience {recipe.early_stopping.patience}" if recipe.early_stopping.enabled else ""),
        f"[bold]processes[/] {plan.world_size}{' FSDP' if recipe.train.fsdp and plan.world_size > 1 else ''} (micro-batch {recipe.train.micro_batch_size} x accumulation "
        f"{recipe.train.gradient_accumulation} x {plan.world_size} = {plan.effective_batch} examples per step)",
        f"[bold]batching[/]  {mode}"
        + (f" ({'steps counted over packed sequences' if packed_counted else 'step count recomputed after packing'})"
           if mode == "packed" else ""),
        f"[bold]output[/]    {run}",
    ]
    console.print("\n".join(lines))


def print_summary(metrics: dict, run: Path) -> None:
    table = Table(title="finetune: run finished", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("steps", f"{metrics['global_step']} of {metrics['planned_steps']} ({metrics['epochs_completed']:.2f} epochs)")
    table.add_row("stopped early", "yes" if metrics["stopped_early"] else "no")
    table.add_row("best validation loss", f"{metrics['best_eval_loss']:.4f} at step {metrics['best_step']}")
    if "test_loss" in metrics:
        table.add_row("test loss / perplexity", f"{metrics['test_loss']:.4f} / {metrics['test_perplexity']:.2f}")
    for event in metrics.get("events", []):
        details = ", ".join(f"{k} {v}" for k, v in event.items() if k not in ("type", "step"))
        table.add_row(f"{event['type']} at step {event['step']}", details)
    table.add_row("time", f"{metrics['timings']['total_s']:.1f} s")
    table.add_row("adapter", str(run / "adapter"))
    console.print(table)


from finetune import cli_data, cli_doctor, cli_run  # noqa: E402,F401  (register data inspect, doctor, eval, generate, chat, merge)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
