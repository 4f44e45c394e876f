"""The Typer app and what every command shares: consoles, common options, error mapping, JSON output.

The command groups (cli/train.py, cli/vram.py, cli/run.py, cli/data.py, cli/doctor.py) register
themselves on `app`; cli/__init__.py imports them all. Each command imports the part it calls inside
its body: `finetune --help` must load every command module, and the Recipe alone (pydantic) would
double its start-up time (measured 0.14 s -> 0.30 s on the CI machine kind). Below cli/, light
modules are imported at the top.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import os
import sys
from collections.abc import Callable
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from finetune import __version__
from finetune.errors import UserError, disk_full
from finetune.train.launch import report_user_error

LOG_WIDTH = 240  # columns of tables written to a file or pipe (rich would use 80)

app = typer.Typer(
    help="Fine-tune small open LLMs with QLoRA: one YAML recipe, early stopping, a held-out test score.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
console = Console(
    stderr=True, soft_wrap=True
)  # on stderr, so stdout stays clean for --json; never wrapped at 80 columns in logs
out = Console()
for _stream in (console, out):
    if not _stream.is_terminal:  # a file or a pipe: a table row stays on one line (grep, tail -f)
        _stream.width = LOG_WIDTH

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
                user_error(
                    f"no space left for the files being written ({reason}): free disk space or write elsewhere with -o"
                )
            first = str(err).splitlines()[0] if str(err) else ""
            typer.echo(
                f"error: unexpected {err.__class__.__name__}: {first} (rerun with --debug for the traceback)", err=True
            )
            raise typer.Exit(1) from None

    return wrapper


def user_error(message: str) -> NoReturn:
    """One line on stderr (or, under `--nproc`, left for the launching process to print), exit 2."""
    if not report_user_error(message):
        typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@contextlib.contextmanager
def stdout_to_stderr():
    """Libraries that print while loading must not corrupt `--json` on stdout (Python and C level)."""
    saved = fd = None
    try:
        sys.stdout.flush()
        fd = sys.stdout.fileno()
        saved = os.dup(fd)
        os.dup2(sys.stderr.fileno(), fd)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        saved = None  # a captured stream (tests): swapping sys.stdout below is enough
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved is not None:
            sys.stdout.flush()
            os.dup2(saved, fd)
            os.close(saved)


def emit_json(data: dict) -> None:
    """The one JSON object of `--json` on stdout. NaN/inf (a diverged loss) become strings: valid JSON."""

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
