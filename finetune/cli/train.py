"""`finetune train`, `validate`, `recipes` and `init`: a recipe in, a run directory (or a verdict) out; or a
data file in, a starter recipe out."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from finetune.cli.app import Debug, Overrides, app, console, handle_errors
from finetune.errors import UserError


@app.command()
@handle_errors
def train(
    recipe: Annotated[
        Path | None,
        typer.Argument(help="Recipe YAML file or shipped recipe name (quickstart); --resume: default RUN/recipe.yaml."),
    ] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Run directory (default: output.dir).")] = None,
    set_: Overrides = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty run directory.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the run's newest complete checkpoint.")
    ] = False,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Allow .bin/.pt weights (pickle can run code when loaded).")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate, read and tokenize the data, print the plan; load no weights.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Train even if the VRAM estimate exceeds free GPU memory.")
    ] = False,
    nproc: Annotated[int, typer.Option("--nproc", help="Data-parallel processes (GPUs) through torchrun.")] = 1,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar.")] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Show library warnings and logs.")] = False,
    debug: Debug = False,
) -> None:
    """Fine-tune a model as the recipe says and write a run directory.

    Example: finetune train recipes/quickstart.yaml -o runs/quick --set train.epochs=1
    Shipped: finetune train quickstart   (a name from `finetune recipes`, from any folder)
    Resume:  finetune train --resume -o runs/quick
    """
    from finetune.config import load_recipe
    from finetune.paths import find_recipe
    from finetune.train.launch import finish
    from finetune.train.loop import Stopped
    from finetune.train.workflow import TrainRequest, fine_tune

    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; choose one")
    if nproc < 1:
        raise UserError(f"--nproc must be at least 1 (got {nproc})")
    if recipe is None:
        if not (resume and output):
            raise UserError("train needs a RECIPE (or `--resume -o RUN`, which reads RUN/recipe.yaml)")
        recipe = output / "recipe.yaml"
        if not recipe.is_file():
            raise UserError(f"{output}: no recipe.yaml here, so it is not a finetune run to resume; check -o")
    recipe = find_recipe(recipe)
    loaded = load_recipe(recipe, [*(set_ or []), *(["model.allow_pickle=true"] if allow_pickle else [])])
    run = output or Path(loaded.output.dir or f"runs/{recipe.stem}")
    loaded.output.dir = str(run)
    switches = {
        "--overwrite": overwrite,
        "--resume": resume,
        "--allow-pickle": allow_pickle,
        "--force": force,
        "-q": quiet,
        "-v": verbose,
        "--debug": debug,
    }
    request = TrainRequest(
        run=run,
        recipe_file=recipe,
        overwrite=overwrite,
        resume=resume,
        dry_run=dry_run,
        force=force,
        nproc=nproc,
        progress=not quiet,
        verbose=verbose,
        worker_args=[
            str(recipe),
            "-o",
            str(run),
            *(f"--set={s}" for s in set_ or []),
            *(f for f, on in switches.items() if on),
        ],
    )
    try:
        code = fine_tune(loaded, request, console)
    except Stopped as stop:  # every rank stops together (the stop decisions are agreed across ranks)
        finish()
        hint = f"; resume with: finetune train --resume -o {shlex.quote(str(run))}" if stop.resumable else ""
        typer.echo(f"stopped: {stop}{hint}", err=True)
        raise typer.Exit(stop.exit_code) from None
    if code:
        raise typer.Exit(code)


@app.command()
@handle_errors
def validate(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file or shipped recipe name.")],
    set_: Overrides = None,
    debug: Debug = False,
) -> None:
    """Check a recipe (keys, types, values) and its data without loading a model.

    Example: finetune validate recipes/llama-3.2-1b-finance.yaml
    """
    from finetune.config import load_recipe
    from finetune.data.read import check_objective, load_splits
    from finetune.paths import find_recipe

    loaded = load_recipe(find_recipe(recipe), set_ or [])
    splits = load_splits(loaded.data)
    check_objective(loaded.train.objective, splits.format, loaded.data)
    sizes = ", ".join(f"{k} {v}" for k, v in splits.sizes().items())
    typer.echo(f"{recipe}: valid ({splits.format} data: {sizes})")


@app.command()
@handle_errors
def recipes(debug: Debug = False) -> None:
    """List the recipes shipped with finetune, one line each: train one by name from any folder.

    Example: finetune recipes && finetune train quickstart
    """
    import yaml

    from finetune.paths import shipped_recipes

    shipped = shipped_recipes()
    width = max((len(name) for name in shipped), default=0)
    for name, path in shipped.items():
        description = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("description", "")
        typer.echo(f"{name:<{width}}  {description}")


@app.command()
@handle_errors
def init(
    data_file: Annotated[Path, typer.Argument(help="A JSONL/JSON/CSV/Parquet data file.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Recipe file to write.")] = Path("recipe.yaml"),
    model: Annotated[
        str | None,
        typer.Option("--model", help="Hub id, local directory or builtin:tiny-llama (default Llama 3.2 1B Instruct)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing recipe file.")] = False,
    debug: Debug = False,
) -> None:
    """Write a commented starter recipe for a data file: its format, max_length and the GPU memory it needs.

    Example: finetune init data/finance_qa.jsonl -o finance.yaml && finetune train finance.yaml
    """
    from finetune.model.loading import quiet_libraries, tokenizer_for_lengths
    from finetune.train.starter import DEFAULT_MODEL, starter_recipe

    if output.is_dir():
        raise UserError(f"{output}: is a directory; give the recipe file to write with -o")
    if output.exists() and not force:
        raise UserError(f"{output}: already exists; choose another -o or pass --force to replace it")
    if output.exists() and (
        data_file.exists() and output.samefile(data_file) or output.suffix not in (".yaml", ".yml")
    ):
        # --force replaces a recipe, never the data (or another file the recipe would not be)
        raise UserError(
            f"{output}: --force replaces a recipe file (.yaml) only, and never the data file; choose another -o"
        )
    quiet_libraries(verbose=False)  # a tokenizer may be loaded: no transformers chatter
    starter = starter_recipe(data_file, output, model or DEFAULT_MODEL, tokenizer_for_lengths)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("w" if force else "x", encoding="utf-8") as file:
            file.write(starter.text)
    except FileExistsError:
        raise UserError(f"{output}: already exists; choose another -o or pass --force to replace it") from None
    except OSError as err:
        raise UserError(f"{output}: cannot write the recipe ({err.strerror or err})") from err
    bad = f", {starter.bad_rows} bad rows (`finetune data inspect` lists them)" if starter.bad_rows else ""
    typer.echo(f"wrote {output}: {starter.format} data, {starter.rows} rows{bad}, max_length {starter.max_length}")
    typer.echo(f"  lengths {starter.lengths_from}; {starter.gpu}")
    typer.echo(f"next: finetune validate {output}  then  finetune train {output}")
