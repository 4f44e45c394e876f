"""`finetune data ...`: commands about the data itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from finetune.cli.app import Debug, app, handle_errors, out

data_app = typer.Typer(help="Look at your data before training on it.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("inspect")
@handle_errors
def inspect_command(
    source: Annotated[
        str, typer.Argument(metavar="FILE_OR_RECIPE", help="A JSONL/JSON/CSV/Parquet file, or a recipe (.yaml).")
    ],
    against: Annotated[
        str | None, typer.Option("--against", help="Evaluation file to check FILE against for leakage.")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Tokenizer: hub id, local directory or builtin:tiny-llama.")
    ] = None,
    max_length: Annotated[
        int | None, typer.Option("--max-length", help="Tokens per example (default data.max_length or 1024).")
    ] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a length histogram PNG here.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 2 when any row is bad (for CI gates).")] = False,
    debug: Debug = False,
) -> None:
    """Rows, format, bad rows, duplicates, token lengths, truncation and train/test leakage of a data set.

    Example: finetune data inspect data/finance_qa.jsonl --model builtin:tiny-llama --plot lengths.png
    """
    from finetune.data.inspect import inspect_data
    from finetune.model.loading import quiet_libraries, tokenizer_for_lengths

    if model or Path(source).suffix.lower() in (".yaml", ".yml"):
        quiet_libraries(verbose=False)  # a tokenizer may be loaded: no transformers chatter
    report = inspect_data(source, tokenizer_for_lengths, against=against, model=model, max_length=max_length, plot=plot)
    if json_output:
        typer.echo(json.dumps(report))
    else:
        print_report(report)
    if strict and report["bad_rows"]:
        typer.echo(f"error: {report['bad_rows']} bad rows in {source} (--strict); fix the rows listed", err=True)
        raise typer.Exit(2)


def print_report(report: dict[str, Any]) -> None:
    summary = Table(title=f"data inspect: {report['source']}", show_header=False, box=None)
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("rows", f"{report['rows']} usable" + (f", {report['bad_rows']} bad" if report["bad_rows"] else ""))
    if "splits" in report:
        summary.add_row("splits", ", ".join(f"{name} {n}" for name, n in report["splits"].items()))
    summary.add_row("format", f"{report['format']} (columns: {', '.join(report['columns'])})")
    if "labels" in report:
        ratio = report["imbalance"]
        labels = ", ".join(f"{name} {n}" for name, n in report["labels"].items())
        summary.add_row("labels", labels + (f"; imbalance {ratio:g}x (largest/smallest)" if ratio else ""))
    summary.add_row("duplicates", f"{report['duplicates']} rows repeat an earlier row (case and whitespace ignored)")
    summary.add_row(
        "near duplicates", f"{report['near_duplicate_rows']} rows nearly repeat an earlier row (Jaccard >= 0.8)"
    )
    lengths = report["token_lengths"]
    if lengths["max"] is not None:
        summary.add_row(
            f"lengths ({lengths['unit']})", "  ".join(f"{k} {lengths[k]}" for k in ("min", "p50", "p90", "p99", "max"))
        )
    if report["truncated_rows"] is not None:
        line = f"{report['truncated_rows']} rows exceed max_length {report['max_length']}, losing {report['truncated_tokens']} tokens"
        if report["truncated_to_no_answer"]:
            line += f"; {report['truncated_to_no_answer']} lose their whole answer (training drops them)"
        summary.add_row("truncation", line)
    if "leaked" in report:
        summary.add_row(
            "leakage",
            f"{report['leaked']} evaluation rows also in training, "
            f"{report['near_duplicates']} near duplicates (Jaccard >= {report['leakage']['threshold']})",
        )
    if "preference" in report:
        pairs = report["preference"]
        for side, stats in pairs["lengths"].items():
            if stats["max"] is not None:
                summary.add_row(
                    f"{side} ({pairs['unit']})", "  ".join(f"{k} {stats[k]}" for k in ("min", "p50", "p99", "max"))
                )
        line = f"{pairs['identical_pairs']} identical (bad rows), {pairs['near_identical_pairs']} nearly identical"
        summary.add_row("pairs", line + " (chosen and rejected >= 90% alike: little to learn)")
        if pairs["pairs_cut_to_fit"] is not None:
            summary.add_row(
                "pairs vs max_length",
                f"{pairs['pairs_cut_to_fit']} prompts cut to fit, {pairs['pairs_dropped_too_long']} pairs dropped",
            )
    if report.get("plot"):
        summary.add_row("plot", report["plot"])
    out.print(summary)

    if report["problems"]:
        table = Table(title=f"bad rows ({report['empty_rows']} empty, {report['malformed_rows']} malformed)")
        for column in ("where", "kind", "problem"):
            table.add_column(column)
        for problem in report["problems"]:
            table.add_row(problem["location"], problem["kind"], problem["message"])
        out.print(table)
    if report["duplicate_groups"]:
        table = Table(title="duplicates (largest groups)")
        for column in ("copies", "where", "text"):
            table.add_column(column)
        for group in report["duplicate_groups"]:
            table.add_row(str(group["count"]), ", ".join(group["locations"]), group["text"])
        out.print(table)
    if report["near_duplicate_pairs"]:
        table = Table(title="near duplicates (most similar pairs)")
        for column in ("similarity", "where", "later row's text"):
            table.add_column(column)
        for pair in report["near_duplicate_pairs"]:
            where = f"{pair['second']['location']} ~ {pair['first']['location']}"
            table.add_row(f"{pair['similarity']:.2f}", where, pair["second"]["text"])
        out.print(table)
    if report.get("leakage", {}).get("worst"):
        table = Table(title="leakage: most similar training/evaluation pairs")
        for column in ("similarity", "evaluation", "training", "evaluation text"):
            table.add_column(column)
        for match in report["leakage"]["worst"]:
            table.add_row(
                f"{match['similarity']:.2f}" + (" exact" if match["exact"] else ""),
                f"{match['evaluation_side']} {match['evaluation']['location']}",
                f"{match['train_side']} {match['train']['location']}",
                match["evaluation"]["text"],
            )
        out.print(table)
    for note in report["notes"]:
        out.print(f"[yellow]note:[/] {note}")
