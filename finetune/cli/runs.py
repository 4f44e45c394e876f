"""Runs side by side: `finetune runs` (list run directories) and `finetune compare` (overlay their curves)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from finetune.cli.app import Debug, app, console, emit_json, handle_errors, out

STATE_STYLES = {"finished": "green", "training": "cyan", "interrupted": "yellow", "unfinished": "yellow"}


@app.command("runs")
@handle_errors
def runs_command(
    folder: Annotated[
        Path, typer.Argument(metavar="DIR", help="A folder of run directories (one level down), or one run directory.")
    ] = Path("runs"),
    sort: Annotated[str, typer.Option("--sort", help="newest (when the run started) | name")] = "newest",
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    debug: Debug = False,
) -> None:
    """List the runs in a folder: state, model, steps, base -> best validation loss, test score, time.

    Example: finetune runs runs --sort name
    """
    from finetune.run.listing import list_runs
    from finetune.run.run_dir import MARKER

    summaries = list_runs(folder, sort)
    if json_output:
        emit_json({"folder": str(folder), "sort": sort, "runs": [s.to_json() for s in summaries]})
        return
    if not summaries:
        console.print(f"no run directories in {folder} (a run directory holds {MARKER})")
        return
    print_table(runs_table(summaries, f"runs in {folder}"))


@app.command("compare")
@handle_errors
def compare_command(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN", help="Two or more run directories.")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="The PNG to write (replaced only if compare wrote it).")
    ] = Path("compare.png"),
    force: Annotated[bool, typer.Option("--force", help="Replace -o even if it is not compare's own plot.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    debug: Debug = False,
) -> None:
    """Overlay the validation-loss curves of runs in one PNG (best steps starred) and print their table.

    Example: finetune compare runs/lr-2e-4 runs/lr-1e-3 -o lr.png
    """
    from finetune.run.compare import check_plot_target, compare_figure, compare_warnings, open_for_compare, save_plot

    summaries = open_for_compare(runs)
    check_plot_target(output, force)  # before drawing: never replace a file of the user's silently
    warnings = compare_warnings(summaries)
    save_plot(compare_figure(summaries), output)
    if json_output:
        emit_json({"plot": str(output), "warnings": warnings, "runs": [s.to_json() for s in summaries]})
        return
    print_table(runs_table(summaries, "validation loss compared"))
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    console.print(f"plot written to {output}", markup=False, highlight=False)


def print_table(table: Table) -> None:
    """A terminal's own width; piped or captured, app.LOG_WIDTH: whole rows (one line per run to grep)."""
    out.print(table)


def runs_table(summaries, title: str) -> Table:
    from finetune.run.listing import COLUMNS, table_row

    table = Table(title=title, box=box.SIMPLE_HEAD)
    for column in COLUMNS:
        right = column in ("steps", "time")
        table.add_column(column, justify="right" if right else "left", overflow="fold")
    for summary in summaries:
        cells = [Text(cell) for cell in table_row(summary)]  # Text: a name with [brackets] is no markup
        cells[1].stylize(STATE_STYLES.get(summary.state, "red"))
        cells[7].stylize({True: "green", False: "red"}.get(summary.improved, ""))
        table.add_row(*cells)
    return table
